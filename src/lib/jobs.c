/* jobs.c - libtitan's Redis job client: the client side of docs/JOBS.md over hiredis. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "titan/jobs.h"
#include "clock.h"
#include "jsonscan.h"
#include "redis.h"
#include "reply_internal.h"

#define S_DEFAULT_TIMEOUT_MS 5000
#define S_MAX_TIMEOUT_MS 3600000
#define S_DEFAULT_RESULT_TTL_S 86400
/* Room for "{PREFIX}:idem:" plus the longest idempotency key. */
#define S_MAX_KEY (TITAN_JOB_MAX_PREFIX_LEN + TITAN_JOB_MAX_KEY_LEN + 16)
/* Jobs titan_jobs_list and titan_jobs_wait ask about in one pipelined round trip. */
#define S_BATCH 256
#define S_POLL_MIN_MS 20
#define S_POLL_MAX_MS 500

struct titan_jobs {
    redisContext *ctx; /* NULL until the first call, and after an I/O error (remade on the next call) */
    titan_redis_url url;
    char prefix[TITAN_JOB_MAX_PREFIX_LEN + 1]; /* "titan": keys are "{titan}:..." (redis.h) */
    int timeout_ms;
    int result_ttl_s;
    char last_error[512];
};

/* The fields titan_jobs_status reads, in the order s_fill_info expects. */
static const char *const s_info_fields[] = {"state",       "priority", "attempts", "created_ms", "started_ms",
                                            "finished_ms", "error",    "code",     "worker"};
#define S_NINFO (sizeof s_info_fields / sizeof s_info_fields[0])

static const char *const s_state_names[] = {"any", "queued", "running", "done", "failed", "cancelled"};

/* Records the last error of `j` (printf-style). */
__attribute__((format(printf, 2, 3))) static void s_set_error(titan_jobs *j, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->last_error, sizeof j->last_error, fmt, ap);
    va_end(ap);
}

static void s_sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

TITAN_API const char *titan_job_state_name(titan_job_state s)
{
    return (unsigned)s < sizeof s_state_names / sizeof s_state_names[0] ? s_state_names[s] : NULL;
}

TITAN_API int titan_job_state_from_name(const char *name)
{
    for (size_t i = 0; name && i < sizeof s_state_names / sizeof s_state_names[0]; i++)
        if (strcmp(name, s_state_names[i]) == 0) return (int)i;
    return -1;
}

TITAN_API int titan_job_state_ended(titan_job_state s)
{
    return s == TITAN_JOB_DONE || s == TITAN_JOB_FAILED || s == TITAN_JOB_CANCELLED;
}

/* Returns true when `id` is a job id: 32 lowercase hex characters. */
static bool s_id_ok(const char *id)
{
    if (!id) return false;
    for (int i = 0; i < TITAN_JOB_ID_LEN; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'))) return false;
    return id[TITAN_JOB_ID_LEN] == '\0';
}

TITAN_API int titan_jobs_check_url(const char *redis_url, char *why, size_t cap)
{
    titan_redis_url u;
    int rc = titan_redis_url_parse(redis_url, &u, why, cap);
    if (rc == 0) {
        if (why && cap) why[0] = '\0';
        titan_redis_url_wipe(&u);
    }
    return rc;
}

TITAN_API void titan_jobs_opts_init(titan_jobs_opts *opts)
{
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->prefix = TITAN_REDIS_DEFAULT_PREFIX;
    opts->timeout_ms = S_DEFAULT_TIMEOUT_MS;
    opts->result_ttl_s = S_DEFAULT_RESULT_TTL_S;
}

TITAN_API titan_jobs *titan_jobs_new(const char *redis_url, const titan_jobs_opts *opts)
{
    titan_jobs_opts o;
    titan_jobs_opts_init(&o);
    if (opts) o = *opts;
    if (!o.prefix) o.prefix = TITAN_REDIS_DEFAULT_PREFIX;
    if (!titan_redis_prefix_ok(o.prefix) || o.timeout_ms < 1 || o.timeout_ms > S_MAX_TIMEOUT_MS ||
        o.result_ttl_s < 1) {
        errno = EINVAL;
        return NULL;
    }
    titan_jobs *j = calloc(1, sizeof *j);
    if (!j) {
        errno = ENOMEM;
        return NULL;
    }
    if (titan_redis_url_parse(redis_url, &j->url, NULL, 0) != 0 ||
        (o.password && titan_redis_url_set_password(&j->url, o.password) != 0)) {
        titan_jobs_destroy(&j);
        errno = EINVAL;
        return NULL;
    }
    snprintf(j->prefix, sizeof j->prefix, "%s", o.prefix);
    j->timeout_ms = o.timeout_ms;
    j->result_ttl_s = o.result_ttl_s;
    return j;
}

static void s_disconnect(titan_jobs *j)
{
    if (j->ctx) {
        redisFree(j->ctx);
        j->ctx = NULL;
    }
}

TITAN_API void titan_jobs_destroy(titan_jobs **j)
{
    if (!j || !*j) return;
    titan_jobs *p = *j;
    s_disconnect(p);
    titan_redis_url_wipe(&p->url);
    free(p);
    *j = NULL;
}

TITAN_API const char *titan_jobs_last_error(const titan_jobs *j)
{
    return j ? j->last_error : "";
}

/* --- Redis plumbing (the connection itself is redis.h's) --- */

/* Maps the failure of the hiredis context (errno `e` saved right after the failed call) to -errno, records
 * why, and drops the connection: hiredis leaves a failed context unusable. */
static int s_io_failure(titan_jobs *j, int e, const char *doing)
{
    char why[400];
    int rc = titan_redis_io_error(j->ctx, e, j->timeout_ms, why, sizeof why);
    s_set_error(j, "%s Redis at %s:%d: %s", doing, j->url.host, j->url.port, why);
    s_disconnect(j);
    return rc;
}

/* Maps a Redis error reply to -errno and records its text. */
static int s_reply_error(titan_jobs *j, const redisReply *r)
{
    s_set_error(j, "Redis at %s:%d answered: %.400s", j->url.host, j->url.port, r->str ? r->str : "");
    return titan_redis_reply_is_auth(r) ? -EACCES : -EPROTO;
}

/* Connects (and authenticates, and selects the database) unless connected. Returns 0 or -errno. */
static int s_connect(titan_jobs *j)
{
    if (j->ctx) return 0;
    titan_redis_timeouts t = {.connect_ms = j->timeout_ms, .command_ms = j->timeout_ms};
    char why[400];
    int rc = titan_redis_connect(&j->url, &t, &j->ctx, why, sizeof why);
    if (rc) {
        j->ctx = NULL;
        s_set_error(j, "connecting to Redis at %s:%d: %s", j->url.host, j->url.port, why);
    }
    return rc;
}

/* Runs one command of `argc` binary-safe arguments. Returns 0 and *out (freeReplyObject it), or -errno. */
static int s_command(titan_jobs *j, int argc, const char **argv, const size_t *lens, redisReply **out)
{
    int rc = s_connect(j);
    if (rc) return rc;
    errno = 0;
    redisReply *r = redisCommandArgv(j->ctx, argc, argv, lens);
    if (!r) return s_io_failure(j, errno, "talking to");
    if (r->type == REDIS_REPLY_ERROR) {
        rc = s_reply_error(j, r);
        freeReplyObject(r);
        return rc;
    }
    *out = r;
    return 0;
}

/* A command for s_pipeline: up to 24 binary-safe arguments. */
typedef struct {
    int argc;
    const char *argv[24];
    size_t lens[24];
} s_cmd;

static void s_arg(s_cmd *c, const char *s, size_t n)
{
    c->argv[c->argc] = s;
    c->lens[c->argc] = n;
    c->argc++;
}

static void s_arg_str(s_cmd *c, const char *s)
{
    s_arg(c, s, strlen(s));
}

/* Sends n commands in one round trip and reads their replies into out[0..n) (each the caller's to
 * freeReplyObject; error replies included). Returns 0, or -errno with every out[i] NULL. */
static int s_pipeline(titan_jobs *j, const s_cmd *cmds, size_t n, redisReply **out)
{
    int rc = s_connect(j);
    if (rc) return rc;
    for (size_t i = 0; i < n; i++)
        /* hiredis 0.14 takes a non-const argv that it only reads. */
        if (redisAppendCommandArgv(j->ctx, cmds[i].argc, (const char **)cmds[i].argv, cmds[i].lens) !=
            REDIS_OK)
            return s_io_failure(j, ENOMEM, "talking to");
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        errno = 0;
        if (redisGetReply(j->ctx, &r) != REDIS_OK || !r) {
            rc = s_io_failure(j, errno, "talking to");
            for (size_t k = 0; k < i; k++) {
                freeReplyObject(out[k]);
                out[k] = NULL;
            }
            return rc;
        }
        out[i] = r;
    }
    return 0;
}

/* Writes the key of `kind` (redis.h's layout) into buf, S_MAX_KEY bytes: always room for it. */
static size_t s_key(const titan_jobs *j, char *buf, size_t cap, titan_redis_key_kind kind, const char *id)
{
    int n = titan_redis_key(buf, cap, j->prefix, kind, id);
    return n < 0 ? 0 : (size_t)n;
}

/* --- record parsing --- */

static const char *s_str(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? r->str : NULL;
}

/* Parses an optional integer field; absent is 0. Returns false for anything but a decimal in range. */
static bool s_int_field(const redisReply *r, int64_t max, int64_t *out)
{
    const char *s = s_str(r);
    *out = 0;
    if (!s) return !r || r->type == REDIS_REPLY_NIL;
    if (!*s || r->len > 19) return false;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return false;
        v = v * 10 + (*p - '0');
    }
    if (v > max) return false;
    *out = v;
    return true;
}

/* Fills *info from the HMGET reply of s_info_fields. Returns 0, -ENOENT (no record) or -EPROTO. */
static int s_fill_info(titan_jobs *j, const char *id, const redisReply *r, titan_job_info *info)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != S_NINFO) {
        s_set_error(j, "Redis answered HMGET with something other than %zu values", S_NINFO);
        return -EPROTO;
    }
    redisReply **e = r->element;
    titan_job_info in;
    memset(&in, 0, sizeof in);
    const char *state = s_str(e[0]);
    if (!state) {
        s_set_error(j, "no job %s (unknown, or its record expired)", id);
        return -ENOENT;
    }
    int st = titan_job_state_from_name(state);
    if (st <= 0) {
        s_set_error(j, "job %s has an unknown state \"%.64s\"", id, state);
        return -EPROTO;
    }
    in.state = (titan_job_state)st;
    const char *prio = s_str(e[1]);
    in.priority = prio && strcmp(prio, "high") == 0 ? TITAN_JOB_HIGH : TITAN_JOB_NORMAL;
    int64_t attempts;
    if (!s_int_field(e[2], INT_MAX, &attempts) || !s_int_field(e[3], INT64_MAX, &in.created_ms) ||
        !s_int_field(e[4], INT64_MAX, &in.started_ms) || !s_int_field(e[5], INT64_MAX, &in.finished_ms)) {
        s_set_error(j, "job %s has a malformed number in its record", id);
        return -EPROTO;
    }
    in.attempts = (int)attempts;
    snprintf(in.error, sizeof in.error, "%s", s_str(e[6]) ? s_str(e[6]) : "");
    snprintf(in.code, sizeof in.code, "%s", s_str(e[7]) ? s_str(e[7]) : "");
    snprintf(in.worker, sizeof in.worker, "%s", s_str(e[8]) ? s_str(e[8]) : "");
    *info = in;
    return 0;
}

/* Builds the HMGET of s_info_fields for the job key in `key`. */
static void s_info_cmd(s_cmd *c, const char *key, size_t klen)
{
    c->argc = 0;
    s_arg_str(c, "HMGET");
    s_arg(c, key, klen);
    for (size_t i = 0; i < S_NINFO; i++)
        s_arg_str(c, s_info_fields[i]);
}

/* --- the API --- */

/* Checks a request header cheaply: a JSON object whose "op" is a string. The worker checks the rest. */
static bool s_header_ok(const char *h)
{
    const char *v = NULL;
    size_t n = 0;
    return titan_json_find_member(h, strlen(h), "op", SIZE_MAX, &v, &n) == 0 && n >= 2 && v[0] == '"';
}

/* One request's submission, with its own buffers (JOBS.md, step 1: the record before the queue entry,
 * in one atomic step): MULTI, HSET of the record, ZADD to the index, XADD to the queue, EXEC; with an
 * idempotency key, the submit script (redis.h), which takes the key if and only if it writes the job.
 * A transaction costs Redis less than a script call for these three commands. */
#define S_SUBMIT_MAXARGS (3 + 4 + 2 + 2 * (7 + TITAN_JOB_MAX_FRAMES))
typedef struct {
    const char *argv[S_SUBMIT_MAXARGS]; /* EVAL of the script (keyed), or the HSET of the record */
    size_t lens[S_SUBMIT_MAXARGS];
    int argc;
    bool keyed;
    char id[TITAN_JOB_ID_LEN + 1];
    char kjob[S_MAX_KEY], kindex[S_MAX_KEY], kqueue[S_MAX_KEY], kidem[S_MAX_KEY], created[24], nf[8];
    size_t lindex, lqueue, lcreated;
    char fnames[TITAN_JOB_MAX_FRAMES][28];
} s_submit_cmd;

/* Checks request `r` (the n-th of a batch when `n` >= 0) and records why it is refused. */
static int s_submit_check(titan_jobs *j, const titan_job_request *r, long n)
{
    char at[40] = "";
    if (n >= 0) snprintf(at, sizeof at, "request %ld: ", n);
    if (!r->header_json || (r->nframes && !r->frames) || r->nframes > TITAN_JOB_MAX_FRAMES ||
        (r->priority != TITAN_JOB_NORMAL && r->priority != TITAN_JOB_HIGH)) {
        s_set_error(j, "%sinvalid argument", at);
        return -EINVAL;
    }
    for (size_t i = 0; i < r->nframes; i++)
        if (!r->frames[i].data && r->frames[i].size) {
            s_set_error(j, "%sframe %zu has no data", at, i + 1);
            return -EINVAL;
        }
    if (r->idempotency_key && (!*r->idempotency_key || strlen(r->idempotency_key) > TITAN_JOB_MAX_KEY_LEN)) {
        s_set_error(j, "%san idempotency key has 1 to %d bytes", at, TITAN_JOB_MAX_KEY_LEN);
        return -EINVAL;
    }
    if (!s_header_ok(r->header_json)) {
        s_set_error(j, "%sthe request header is not a JSON object with a string \"op\"", at);
        return -EINVAL;
    }
    return 0;
}

/* Fills raw[0..n) with random bytes: 16 a job id (128 bits). A batch draws all its ids at once (a
 * system call costs more than the bytes). Returns 0 or -errno. */
static int s_random(titan_jobs *j, unsigned char *raw, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t k = getrandom(raw + got, n - got, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int e = k < 0 && errno ? errno : EIO;
            s_set_error(j, "cannot draw a random job id: %s", strerror(e));
            return -e;
        }
        got += (size_t)k;
    }
    return 0;
}

/* Lays out the submission of checked request `r` in *c, with the job id made of raw[0..16). */
static void s_submit_build(titan_jobs *j, const titan_job_request *r, const unsigned char raw[16],
                           s_submit_cmd *c)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < 16; i++) {
        c->id[2 * i] = hex[raw[i] >> 4];
        c->id[2 * i + 1] = hex[raw[i] & 15];
    }
    c->id[TITAN_JOB_ID_LEN] = '\0';
    const char *key = r->idempotency_key;
    c->keyed = key != NULL;
    size_t ljob = s_key(j, c->kjob, sizeof c->kjob, TITAN_REDIS_KEY_JOB, c->id);
    c->lindex = s_key(j, c->kindex, sizeof c->kindex, TITAN_REDIS_KEY_INDEX, NULL);
    c->lqueue =
        s_key(j, c->kqueue, sizeof c->kqueue,
              r->priority == TITAN_JOB_HIGH ? TITAN_REDIS_KEY_QUEUE_HIGH : TITAN_REDIS_KEY_QUEUE, NULL);
    size_t lidem = key ? s_key(j, c->kidem, sizeof c->kidem, TITAN_REDIS_KEY_IDEM, key) : 0;
    c->lcreated = (size_t)snprintf(c->created, sizeof c->created, "%lld", (long long)titan_clock_wall_ms());
    int lnf = snprintf(c->nf, sizeof c->nf, "%zu", r->nframes);

    c->argc = 0;
#define S_ARG(s, n) (c->argv[c->argc] = (s), c->lens[c->argc] = (n), c->argc++)
#define S_STR(s) S_ARG((s), strlen(s))
    if (key) {
        /* EVAL script numkeys KEYS... id created_ms field value ... By EVAL: a pipeline of hundreds of
         * submissions cannot be sent again after a NOSCRIPT. */
        titan_redis_script_args(NULL, TITAN_REDIS_SCRIPT_SUBMIT, c->argv, c->lens);
        c->argc = 2;
        S_STR("4");
        S_ARG(c->kjob, ljob);
        S_ARG(c->kindex, c->lindex);
        S_ARG(c->kqueue, c->lqueue);
        S_ARG(c->kidem, lidem);
        S_ARG(c->id, TITAN_JOB_ID_LEN);
        S_ARG(c->created, c->lcreated);
    } else {
        S_STR("HSET");
        S_ARG(c->kjob, ljob);
    }
    S_STR("state");
    S_STR("queued");
    S_STR("header");
    S_STR(r->header_json);
    S_STR("nframes");
    S_ARG(c->nf, (size_t)lnf);
    for (size_t i = 0; i < r->nframes; i++) {
        snprintf(c->fnames[i], sizeof c->fnames[i], "frame:%zu", i + 1);
        S_STR(c->fnames[i]);
        S_ARG(r->frames[i].size ? r->frames[i].data : "", r->frames[i].size);
    }
    S_STR("priority");
    S_STR(r->priority == TITAN_JOB_HIGH ? "high" : "normal");
    S_STR("attempts");
    S_STR("0");
    S_STR("created_ms");
    S_ARG(c->created, c->lcreated);
    if (key) {
        S_STR("idempotency_key");
        S_STR(key);
    }
#undef S_ARG
#undef S_STR
}

/* Appends the commands of submission c to the connection's output (s_submit_read reads their
 * replies). Returns 0, or -errno with the connection dropped. */
static int s_submit_append(titan_jobs *j, const s_submit_cmd *c)
{
    /* hiredis 0.14 takes a non-const argv that it only reads. */
    if (c->keyed)
        return redisAppendCommandArgv(j->ctx, c->argc, (const char **)c->argv, c->lens) == REDIS_OK
                   ? 0
                   : s_io_failure(j, ENOMEM, "talking to");
    const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const char *zadd[4] = {"ZADD", c->kindex, c->created, c->id};
    size_t zlens[4] = {4, c->lindex, c->lcreated, TITAN_JOB_ID_LEN};
    const char *xadd[5] = {"XADD", c->kqueue, "*", "id", c->id};
    size_t xlens[5] = {4, c->lqueue, 1, 2, TITAN_JOB_ID_LEN};
    size_t mlen = 5, elen = 4;
    if (redisAppendCommandArgv(j->ctx, 1, multi, &mlen) != REDIS_OK ||
        redisAppendCommandArgv(j->ctx, c->argc, (const char **)c->argv, c->lens) != REDIS_OK ||
        redisAppendCommandArgv(j->ctx, 4, zadd, zlens) != REDIS_OK ||
        redisAppendCommandArgv(j->ctx, 5, xadd, xlens) != REDIS_OK ||
        redisAppendCommandArgv(j->ctx, 1, exec, &elen) != REDIS_OK)
        return s_io_failure(j, ENOMEM, "talking to");
    return 0;
}

static int s_submit_answer(titan_jobs *j, const redisReply *r, bool keyed, char id_out[TITAN_JOB_ID_LEN + 1]);

/* Reads every reply to one appended submission (keyed: the script's; else MULTI's five), of job id
 * (unkeyed), and writes the job's id to id_out. Returns 0; -errno for a refusal or an unexpected answer
 * (the connection stays in step); or -errno for an I/O failure, with *lost set (the connection is gone). */
static int s_submit_read(titan_jobs *j, bool keyed, const char *id, char id_out[TITAN_JOB_ID_LEN + 1],
                         bool *lost)
{
    int rc = 0, n = keyed ? 1 : 5;
    for (int k = 0; k < n; k++) {
        redisReply *r = NULL;
        errno = 0;
        if (redisGetReply(j->ctx, (void **)&r) != REDIS_OK || !r) {
            *lost = true;
            return s_io_failure(j, errno, "talking to");
        }
        if (rc == 0 && r->type == REDIS_REPLY_ERROR) {
            rc = s_reply_error(j, r);
        } else if (rc == 0 && keyed) {
            rc = s_submit_answer(j, r, true, id_out);
        } else if (rc == 0 && k == n - 1) { /* EXEC: HSET's, ZADD's and XADD's answers */
            for (size_t e = 0; r->type == REDIS_REPLY_ARRAY && e < r->elements && rc == 0; e++)
                if (r->element[e]->type == REDIS_REPLY_ERROR) rc = s_reply_error(j, r->element[e]);
            if (rc == 0 && (r->type != REDIS_REPLY_ARRAY || r->elements != 3)) {
                s_set_error(
                    j, "Redis answered the submission's EXEC with something other than its three answers");
                rc = -EPROTO;
            }
            if (rc == 0 && id_out != id) memcpy(id_out, id, TITAN_JOB_ID_LEN + 1);
        }
        freeReplyObject(r);
    }
    return rc;
}

/* Takes the job id out of the script's answer `r` into id_out. Returns 0 or -EPROTO. */
static int s_submit_answer(titan_jobs *j, const redisReply *r, bool keyed, char id_out[TITAN_JOB_ID_LEN + 1])
{
    const char *got = NULL;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->type == REDIS_REPLY_INTEGER)
        got = s_str(r->element[1]);
    if (!s_id_ok(got)) {
        s_set_error(j, "Redis answered the submission with something other than a job id%s",
                    keyed ? " (is the idempotency key's value a titan job id?)" : "");
        return -EPROTO;
    }
    memcpy(id_out, got, TITAN_JOB_ID_LEN + 1);
    return 0;
}

TITAN_API int titan_jobs_submit(titan_jobs *j, const char *header_json, const titan_frame *frames,
                                size_t nframes, titan_job_priority priority, const char *idempotency_key,
                                char id_out[TITAN_JOB_ID_LEN + 1])
{
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    titan_job_request req = {header_json, frames, nframes, priority, idempotency_key};
    if (!id_out) {
        s_set_error(j, "invalid argument");
        return -EINVAL;
    }
    int rc = s_submit_check(j, &req, -1);
    if (rc) return rc;
    s_submit_cmd c;
    unsigned char raw[16];
    if ((rc = s_random(j, raw, sizeof raw)) != 0) return rc;
    s_submit_build(j, &req, raw, &c);
    if ((rc = s_connect(j)) != 0 || (rc = s_submit_append(j, &c)) != 0) return rc;
    bool lost = false;
    return s_submit_read(j, c.keyed, c.id, id_out, &lost);
}

/* A batch goes out in pipelined chunks of at most this many submissions or this many payload bytes,
 * so that neither end buffers more than that at once. */
#define S_BATCH_MAX 256
#define S_BATCH_BYTES (8u << 20)

TITAN_API int titan_jobs_submit_many(titan_jobs *j, const titan_job_request *reqs, size_t n,
                                     char (*ids_out)[TITAN_JOB_ID_LEN + 1], size_t *submitted)
{
    if (submitted) *submitted = 0;
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    if ((n && (!reqs || !ids_out)) || n > LONG_MAX) {
        s_set_error(j, "invalid argument");
        return -EINVAL;
    }
    /* Nothing is sent unless every request is well formed. */
    for (size_t i = 0; i < n; i++) {
        int rc = s_submit_check(j, &reqs[i], (long)i);
        if (rc) return rc;
    }
    s_submit_cmd *c = malloc(sizeof *c);
    unsigned char *raw = malloc(16 * S_BATCH_MAX);
    if (!c || !raw) {
        free(c);
        free(raw);
        s_set_error(j, "out of memory");
        return -ENOMEM;
    }
    int rc = 0;
    size_t done = 0;
    while (done < n && rc == 0) {
        rc = s_connect(j);
        if (rc) break;
        size_t end = done, bytes = 0;
        size_t most = n - done < S_BATCH_MAX ? n - done : S_BATCH_MAX;
        if ((rc = s_random(j, raw, 16 * most)) != 0) break;
        while (end < n && end - done < S_BATCH_MAX && (end == done || bytes < S_BATCH_BYTES)) {
            s_submit_build(j, &reqs[end], raw + 16 * (end - done), c);
            for (int a = 0; a < c->argc; a++)
                bytes += c->lens[a];
            if ((rc = s_submit_append(j, c)) != 0) break;
            memcpy(ids_out[end], c->id, TITAN_JOB_ID_LEN + 1); /* confirmed by its replies */
            end++;
        }
        /* Every appended submission is answered in order; read them all even after an error
         * reply, so that the connection stays in step. */
        for (size_t i = done; i < end && j->ctx; i++) {
            bool lost = false;
            int e = s_submit_read(j, reqs[i].idempotency_key != NULL, ids_out[i], ids_out[i], &lost);
            if (lost) {
                char why[sizeof j->last_error];
                rc = e;
                snprintf(why, sizeof why, "%s", j->last_error);
                s_set_error(j,
                            "%s (after %zu of %zu submissions were confirmed; the rest may or may not be "
                            "queued: submit them again with idempotency keys to be sure)",
                            why, done, n);
                break;
            }
            if (e && rc == 0) {
                char why[sizeof j->last_error];
                snprintf(why, sizeof why, "%s", j->last_error);
                s_set_error(j, "request %zu: %s", i, why);
                rc = e;
            }
            if (rc == 0) done = i + 1;
        }
    }
    if (raw) explicit_bzero(raw, 16 * S_BATCH_MAX);
    free(raw);
    free(c);
    if (submitted) *submitted = done;
    return rc;
}

TITAN_API int titan_jobs_status(titan_jobs *j, const char *id, titan_job_info *out)
{
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    if (!s_id_ok(id) || !out) {
        s_set_error(j, "\"%.64s\" is not a job id (32 lowercase hex characters)", id ? id : "(null)");
        return -EINVAL;
    }
    char key[S_MAX_KEY];
    s_cmd c;
    size_t klen = s_key(j, key, sizeof key, TITAN_REDIS_KEY_JOB, id);
    s_info_cmd(&c, key, klen);
    redisReply *r = NULL;
    int rc = s_command(j, c.argc, c.argv, c.lens, &r);
    if (rc) return rc;
    titan_job_info info;
    rc = s_fill_info(j, id, r, &info);
    freeReplyObject(r);
    if (rc == 0) *out = info;
    return rc;
}

/* Steals the string of reply `r` (hiredis mallocs it apart from the object). */
static char *s_steal(redisReply *r)
{
    char *s = r->str;
    r->str = NULL;
    r->len = 0;
    return s;
}

TITAN_API int titan_jobs_result(titan_jobs *j, const char *id, titan_reply **reply)
{
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    if (!s_id_ok(id) || !reply) {
        s_set_error(j, "\"%.64s\" is not a job id (32 lowercase hex characters)", id ? id : "(null)");
        return -EINVAL;
    }
    /* One HMGET reads the state and the whole reply at once, so a worker that writes the outcome
     * meanwhile cannot leave us with half of it. */
    char key[S_MAX_KEY], fnames[TITAN_JOB_MAX_FRAMES][16];
    s_cmd c = {0};
    size_t klen = s_key(j, key, sizeof key, TITAN_REDIS_KEY_JOB, id);
    s_arg_str(&c, "HMGET");
    s_arg(&c, key, klen);
    s_arg_str(&c, "state");
    s_arg_str(&c, "error");
    s_arg_str(&c, "code");
    s_arg_str(&c, "result_header");
    s_arg_str(&c, "result_nframes");
    for (int i = 0; i < TITAN_JOB_MAX_FRAMES; i++) {
        snprintf(fnames[i], sizeof fnames[i], "result:%d", i + 1);
        s_arg_str(&c, fnames[i]);
    }
    redisReply *r = NULL;
    int rc = s_command(j, c.argc, c.argv, c.lens, &r);
    if (rc) return rc;
    char *header = NULL;
    void *data[TITAN_JOB_MAX_FRAMES] = {0};
    size_t sizes[TITAN_JOB_MAX_FRAMES] = {0};
    int64_t nframes = 0;
    rc = -EPROTO;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 5 + TITAN_JOB_MAX_FRAMES) {
        s_set_error(j, "Redis answered HMGET with an unexpected reply");
        goto out;
    }
    redisReply **e = r->element;
    const char *state = s_str(e[0]);
    if (!state) {
        s_set_error(j, "no job %s (unknown, or its record expired)", id);
        rc = -ENOENT;
        goto out;
    }
    int st = titan_job_state_from_name(state);
    if (st == TITAN_JOB_QUEUED || st == TITAN_JOB_RUNNING) {
        s_set_error(j, "job %s is %s: it has no result yet", id, state);
        rc = -EAGAIN;
        goto out;
    }
    if (st == TITAN_JOB_CANCELLED) {
        s_set_error(j, "job %s was cancelled: it has no result", id);
        rc = -ECANCELED;
        goto out;
    }
    if (st != TITAN_JOB_DONE && st != TITAN_JOB_FAILED) {
        s_set_error(j, "job %s has an unknown state \"%.64s\"", id, state);
        goto out;
    }
    if (!s_str(e[3])) {
        if (st == TITAN_JOB_DONE) {
            s_set_error(j, "job %s is done but its record has no result_header", id);
            goto out;
        }
        /* Failed without a reply (e.g. out of attempts): the reply a client would have got. */
        const char *code = s_str(e[2]);
        json_t *o = json_pack("{s:s, s:s}", "error", s_str(e[1]) ? s_str(e[1]) : "the job failed", "code",
                              code && *code ? code : "internal");
        header = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(o);
        if (!header) {
            rc = -ENOMEM;
            goto out;
        }
    } else {
        if (strlen(e[3]->str) != e[3]->len || e[3]->len == 0) {
            s_set_error(j, "job %s has an empty result_header or one with a NUL byte", id);
            goto out;
        }
        if (!s_int_field(e[4], TITAN_JOB_MAX_FRAMES, &nframes)) {
            s_set_error(j, "job %s has a result_nframes that is not a number from 0 to %d", id,
                        TITAN_JOB_MAX_FRAMES);
            goto out;
        }
        for (int64_t i = 0; i < nframes; i++)
            if (!s_str(e[5 + i])) {
                s_set_error(j, "job %s lacks result:%lld of its %lld result frames", id, (long long)i + 1,
                            (long long)nframes);
                goto out;
            }
        header = s_steal(e[3]);
        for (int64_t i = 0; i < nframes; i++) {
            sizes[i] = e[5 + i]->len;
            data[i] = s_steal(e[5 + i]);
        }
    }
    rc = titan_reply_adopt(&header, data, sizes, (size_t)nframes, reply);
out:
    free(header);
    freeReplyObject(r);
    return rc;
}

TITAN_API int titan_jobs_cancel(titan_jobs *j, const char *id)
{
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    if (!s_id_ok(id)) {
        s_set_error(j, "\"%.64s\" is not a job id (32 lowercase hex characters)", id ? id : "(null)");
        return -EINVAL;
    }
    char key[S_MAX_KEY], now[24], ttl[16];
    s_cmd c = {0};
    size_t klen = s_key(j, key, sizeof key, TITAN_REDIS_KEY_JOB, id);
    snprintf(now, sizeof now, "%lld", (long long)titan_clock_wall_ms());
    snprintf(ttl, sizeof ttl, "%d", j->result_ttl_s);
    titan_redis_script_args(NULL, TITAN_REDIS_SCRIPT_CANCEL, c.argv, c.lens);
    c.argc = 2;
    s_arg_str(&c, "1");
    s_arg(&c, key, klen);
    s_arg_str(&c, now);
    s_arg_str(&c, ttl);
    redisReply *r = NULL;
    int rc = s_command(j, c.argc, c.argv, c.lens, &r);
    if (rc) return rc;
    const char *s = r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ? r->str : "";
    int st = titan_job_state_from_name(s);
    if (strcmp(s, "missing") == 0) {
        s_set_error(j, "no job %s (unknown, or its record expired)", id);
        rc = -ENOENT;
    } else if (st == TITAN_JOB_QUEUED) {
        rc = 0;
    } else if (st == TITAN_JOB_RUNNING) {
        s_set_error(j, "job %s is running; a running job cannot be cancelled", id);
        rc = -EBUSY;
    } else if (st > 0 && titan_job_state_ended((titan_job_state)st)) {
        s_set_error(j, "job %s has already ended (%s)", id, s);
        rc = -EALREADY;
    } else {
        s_set_error(j, "job %s has an unknown state \"%.64s\"", id, s);
        rc = -EPROTO;
    }
    freeReplyObject(r);
    return rc;
}

/* Asks for the records of ids[0..n) (n <= S_BATCH) in one round trip, into infos. A missing record gives
 * state TITAN_JOB_ANY. Returns 0 or -errno. */
static int s_fetch_infos(titan_jobs *j, const char *const *ids, size_t n, titan_job_info *infos)
{
    s_cmd *cmds = malloc(n * sizeof *cmds);
    char(*keys)[S_MAX_KEY] = malloc(n * sizeof *keys);
    redisReply **replies = calloc(n, sizeof *replies);
    int rc = -ENOMEM;
    if (!cmds || !keys || !replies) goto out;
    for (size_t i = 0; i < n; i++) {
        size_t klen = s_key(j, keys[i], sizeof keys[i], TITAN_REDIS_KEY_JOB, ids[i]);
        s_info_cmd(&cmds[i], keys[i], klen);
    }
    rc = s_pipeline(j, cmds, n, replies);
    if (rc) goto out;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (replies[i]->type == REDIS_REPLY_ERROR) {
            rc = s_reply_error(j, replies[i]);
            break;
        }
        rc = s_fill_info(j, ids[i], replies[i], &infos[i]);
        if (rc == -ENOENT) {
            memset(&infos[i], 0, sizeof infos[i]);
            infos[i].state = TITAN_JOB_ANY;
            rc = 0;
        }
    }
    if (rc == 0) j->last_error[0] = '\0';
out:
    for (size_t i = 0; replies && i < n; i++)
        freeReplyObject(replies[i]);
    free(replies);
    free(keys);
    free(cmds);
    return rc;
}

TITAN_API int titan_jobs_wait(titan_jobs *j, const char *const *ids, size_t n, int timeout_ms,
                              titan_jobs_wait_fn fn, void *arg, titan_job_state *states)
{
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    if (n && !ids) return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!s_id_ok(ids[i])) {
            s_set_error(j, "\"%.64s\" is not a job id (32 lowercase hex characters)",
                        ids[i] ? ids[i] : "(null)");
            return -EINVAL;
        }
    titan_job_state *seen = calloc(n ? n : 1, sizeof *seen);
    const char **pending = calloc(n ? n : 1, sizeof *pending);
    size_t *slot = calloc(n ? n : 1, sizeof *slot);
    titan_job_info *infos = calloc(S_BATCH, sizeof *infos);
    int rc = -ENOMEM;
    if (!seen || !pending || !slot || !infos) goto out;
    int64_t deadline = timeout_ms >= 0 ? titan_clock_mono_ms64() + timeout_ms : INT64_MAX;
    int64_t pause = S_POLL_MIN_MS;
    size_t ended = 0;
    for (;;) {
        /* Only the jobs not yet seen ending are asked about again. */
        size_t np = 0;
        for (size_t i = 0; i < n; i++)
            if (!titan_job_state_ended(seen[i])) {
                pending[np] = ids[i];
                slot[np++] = i;
            }
        bool changed = false;
        for (size_t b = 0; b < np; b += S_BATCH) {
            size_t m = np - b < S_BATCH ? np - b : S_BATCH;
            if ((rc = s_fetch_infos(j, pending + b, m, infos)) != 0) goto out;
            for (size_t k = 0; k < m; k++) {
                size_t i = slot[b + k];
                if (infos[k].state == TITAN_JOB_ANY) {
                    s_set_error(j, "no job %s (unknown, or its record expired)", ids[i]);
                    rc = -ENOENT;
                    goto out;
                }
                if (infos[k].state == seen[i]) continue;
                seen[i] = infos[k].state;
                changed = true;
                if (titan_job_state_ended(seen[i])) ended++;
                if (fn && fn(ids[i], seen[i], ended, n, arg) != 0) {
                    s_set_error(j, "stopped waiting");
                    rc = -ECANCELED;
                    goto out;
                }
            }
        }
        if (ended == n) break;
        int64_t now = titan_clock_mono_ms64();
        if (now >= deadline) {
            s_set_error(j, "%zu of %zu jobs still pending after %d ms", n - ended, n, timeout_ms);
            rc = -ETIME;
            goto out;
        }
        /* Poll quickly while things move, and back off while they do not. */
        pause = changed ? S_POLL_MIN_MS : (pause * 2 > S_POLL_MAX_MS ? S_POLL_MAX_MS : pause * 2);
        s_sleep_ms(deadline - now < pause ? deadline - now : pause);
    }
    if (states) memcpy(states, seen, n * sizeof *states);
    rc = 0;
out:
    free(seen);
    free(pending);
    free(slot);
    free(infos);
    return rc;
}

TITAN_API int titan_jobs_list(titan_jobs *j, titan_job_state filter, size_t max, titan_jobs_list_fn fn,
                              void *arg)
{
    if (!j) return -EINVAL;
    j->last_error[0] = '\0';
    if (!fn || !titan_job_state_name(filter)) {
        s_set_error(j, "invalid argument");
        return -EINVAL;
    }
    char kindex[S_MAX_KEY], start[24], stop[24];
    size_t lindex = s_key(j, kindex, sizeof kindex, TITAN_REDIS_KEY_INDEX, NULL);
    titan_job_info *infos = calloc(S_BATCH, sizeof *infos);
    const char **ids = calloc(S_BATCH, sizeof *ids);
    redisReply *r = NULL;
    int rc = -ENOMEM, listed = 0;
    if (!infos || !ids) goto out;
    /* Newest first, a batch at a time, so that a filter that matches few jobs still finds `max`. */
    for (long long off = 0;; off += S_BATCH) {
        snprintf(start, sizeof start, "%lld", off);
        snprintf(stop, sizeof stop, "%lld", off + S_BATCH - 1);
        const char *argv[4] = {"ZREVRANGE", kindex, start, stop};
        size_t lens[4] = {9, lindex, strlen(start), strlen(stop)};
        if ((rc = s_command(j, 4, argv, lens, &r)) != 0) goto out;
        if (r->type != REDIS_REPLY_ARRAY) {
            s_set_error(j, "Redis answered ZREVRANGE with something other than an array");
            rc = -EPROTO;
            goto out;
        }
        size_t m = 0;
        for (size_t i = 0; i < r->elements; i++)
            if (s_id_ok(s_str(r->element[i]))) ids[m++] = r->element[i]->str; /* foreign members skipped */
        if (m && (rc = s_fetch_infos(j, ids, m, infos)) != 0) goto out;
        for (size_t i = 0; i < m; i++) {
            if (infos[i].state == TITAN_JOB_ANY) continue; /* expired */
            if (filter != TITAN_JOB_ANY && infos[i].state != filter) continue;
            if (listed == INT_MAX) goto done;
            listed++;
            if (fn(ids[i], &infos[i], arg) != 0 || (max && (size_t)listed >= max)) goto done;
        }
        if (r->elements < S_BATCH) break;
        freeReplyObject(r);
        r = NULL;
    }
done:
    rc = listed;
out:
    freeReplyObject(r);
    free(ids);
    free(infos);
    return rc;
}
