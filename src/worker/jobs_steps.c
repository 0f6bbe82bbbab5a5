/* jobs_steps.c - a job's steps in Redis (docs/JOBS.md): entries started in batches by the start script
 * (skip, dead-letter, or the request handed to its slot), idle times reset while jobs run, and outcomes
 * recorded (the store script for done and failed jobs, retry and revert scripts for the others). */
#include <ctype.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs_internal.h"
#include "log.h"

/* Resets the idle time of every entry in hand whose last reset is a third of the visibility
 * timeout ago (pipelined), so that no worker reclaims a job that is still running or waiting for
 * admission. Short jobs never need it. */
void jobs_heartbeats(titan_jobs_consumer *c)
{
    if (!c->redis) return;
    double now = titan_clock_mono_ms();
    int n = 0;
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state == SL_FREE || sl->state == SL_STARTING || now < sl->next_hb) continue;
        const char *argv[] = {"XCLAIM", c->stream[sl->stream], c->group, c->consumer, "0", sl->entry,
                              "JUSTID"};
        if (jobs_append(c, 7, argv, NULL) != 0) break;
        sl->next_hb = now + c->visibility_ms / 3.0;
        n++;
    }
    for (int i = 0; i < n; i++) {
        redisReply *r = jobs_get(c);
        if (!r) break;
        freeReplyObject(r);
    }
}

/* Queues the retry or revert script for sl (an attempt that did not end the job). Returns 0 or -1. */
static int s_append_requeue(titan_jobs_consumer *c, jobs_slot *sl)
{
    const jobs_outcome *o = &sl->o;
    if (o->kind == O_RETRY) {
        const char *argv[] = {NULL, NULL, "1", sl->key, o->error, o->code};
        titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_RETRY, argv, NULL);
        return jobs_append(c, 6, argv, NULL);
    }
    const char *argv[] = {NULL, NULL, "1", sl->key, c->consumer};
    titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_REVERT, argv, NULL);
    return jobs_append(c, 5, argv, NULL);
}

/* Queues one store script (which also acknowledges the entries) for the n done or failed slots
 * order[0..n). Returns 0 or -1. */
static int s_append_store(titan_jobs_consumer *c, const int *order, int n)
{
    size_t cap = 3 + 2 * (size_t)n + 3 + (size_t)n * (7 + MAX_REPLY_FRAMES);
    const char **argv = malloc(cap * sizeof(*argv));
    size_t *lens = malloc(cap * sizeof(*lens));
    char(*rn)[24] = malloc((size_t)n * sizeof(*rn));
    if (!argv || !lens || !rn) {
        free(argv);
        free(lens);
        free(rn);
        jobs_lost(c, "out of memory");
        return -1;
    }
    char nkeys[16], now[32], ttl[16];
    snprintf(nkeys, sizeof(nkeys), "%d", 2 * n);
    snprintf(now, sizeof(now), "%lld", (long long)titan_clock_wall_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    int a = 0;
#define ARG(p, l) (argv[a] = (p), lens[a++] = (l))
#define ARGS(p) ARG(p, strlen(p))
    titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_STORE, argv, lens);
    a = 2;
    ARGS(nkeys);
    for (int k = 0; k < n; k++) {
        const jobs_slot *sl = &c->slots[order[k]];
        ARGS(sl->key);
        ARGS(c->stream[sl->stream]);
    }
    ARGS(c->group);
    ARGS(now);
    ARGS(ttl);
    for (int k = 0; k < n; k++) {
        jobs_slot *sl = &c->slots[order[k]];
        jobs_outcome *o = &sl->o;
        bool done = o->kind == O_DONE;
        /* The request's frames still in the record: its nframes, known once it started (15: all of them). */
        int qn = snprintf(rn[k], sizeof(rn[k]), "%d", sl->nparts > 0 ? sl->nparts - 1 : MAX_JOB_FRAMES);
        int rl = snprintf(rn[k] + qn + 1, sizeof(rn[k]) - (size_t)qn - 1, "%d",
                          o->nframes > 0 ? o->nframes - 1 : 0);
        ARGS(sl->entry);
        ARGS(done ? "done" : "failed");
        if (o->nframes > 0)
            ARG(zmq_msg_data(&o->frames[0]), zmq_msg_size(&o->frames[0]));
        else
            ARGS("");
        ARGS(done ? "" : o->error);
        ARGS(done ? "" : o->code);
        ARG(rn[k], (size_t)qn);
        ARG(rn[k] + qn + 1, (size_t)rl);
        for (int i = 1; i < o->nframes; i++)
            ARG(zmq_msg_data(&o->frames[i]), zmq_msg_size(&o->frames[i]));
    }
#undef ARG
#undef ARGS
    int rc = jobs_append(c, a, argv, lens);
    free(argv);
    free(lens);
    free(rn);
    return rc;
}

/* Logs what Redis answered to the outcome of sl. */
static void s_recorded(titan_jobs_consumer *c, const jobs_slot *sl, const redisReply *r)
{
    const jobs_outcome *o = &sl->o;
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

/* Acts on the reply of a read that went with a store (jobs_finish; NULL when Redis went away): the jobs
 * it started are taken up, and an empty read puts the next one off as the loop in jobs.c does. A
 * refusal (NOSCRIPT, NOGROUP...) is left to that loop's next read, which meets it again. */
static void s_took_read(titan_jobs_consumer *c, redisReply *r)
{
    if (!r) return;
    if (titan_redis_scripts_missing(&c->scripts, r) || r->type != REDIS_REPLY_ARRAY) {
        if (r->type == REDIS_REPLY_NIL) {
            c->next_read = titan_clock_mono_ms() + c->idle_read_ms;
            c->idle_read_ms = c->idle_read_ms * 2 > IDLE_READ_MAX_MS ? IDLE_READ_MAX_MS : c->idle_read_ms * 2;
        }
        freeReplyObject(r);
        return;
    }
    jobs_take_read(c, r, titan_clock_mono_ms());
}

/* Logs and records the outcome of every DONE slot, pipelined, then frees them: XACK only with the
 * outcome (the store script). Tries again across Redis outages until stop is asked for; an outcome
 * that could not be recorded by then leaves its entry pending, for another attempt. */
void jobs_finish(titan_jobs_consumer *c, bool and_read)
{
    int left = 0;
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state != SL_DONE) continue;
        const jobs_outcome *o = &sl->o;
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
            jobs_slot_release(c, sl);
            continue;
        }
        sl->state = SL_RECORD; /* logged; to be recorded */
        left++;
    }
    if (!left) return;
    c->next_read = 0; /* slots are free again: look for more work at once */
    c->idle_read_ms = IDLE_READ_MIN_MS;
    for (;; and_read = false) {
        if (jobs_connect(c) == 0) {
            jobs_heartbeats(c); /* a large result takes a while to reach Redis */
            /* One pipeline: the retry and revert scripts one by one, then one store script for up to
             * STORE_BATCH outcomes or about PIPE_BYTES of results. */
            int n = 0, nstore = 0;
            double bytes = 0;
            int *store = c->order + c->nslots; /* the second half of order */
            for (int i = 0; i < c->nslots; i++) {
                jobs_slot *sl = &c->slots[i];
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
            /* With every outcome in this pipeline, the read for the slots it frees goes in it too: one
             * round trip, and the server gets new jobs sooner. Not while a reclaim scan is due (the loop
             * in jobs.c does that first), nor once the worker is stopping. */
            bool read = and_read && c->redis && n + nstore == left && !jobs_stopping(c) &&
                        !jobs_draining(c) && titan_clock_mono_ms() < c->next_reclaim &&
                        jobs_room(c, SL_RECORD) > 0 && jobs_append_read(c, jobs_room(c, SL_RECORD)) == 0;
            bool lost = false;
            for (int k = 0; k < n; k++) {
                jobs_slot *sl = &c->slots[c->order[k]];
                redisReply *r = jobs_get(c);
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
                jobs_slot_release(c, sl);
                left--;
            }
            redisReply *r = stored && !lost ? jobs_get(c) : NULL;
            if (r && !titan_redis_scripts_missing(&c->scripts, r)) {
                bool whole = r->type == REDIS_REPLY_ARRAY && r->elements == (size_t)nstore;
                if (!whole && r->type != REDIS_REPLY_ERROR)
                    titan_log(TITAN_LOG_WARN,
                              "jobs: unexpected reply to the store of %d outcomes; they stay "
                              "pending",
                              nstore);
                for (int k = 0; k < nstore; k++) {
                    jobs_slot *sl = &c->slots[store[k]];
                    if (whole || r->type == REDIS_REPLY_ERROR) s_recorded(c, sl, whole ? r->element[k] : r);
                    jobs_slot_release(c, sl);
                    left--;
                }
            }
            if (r) freeReplyObject(r);
            if (read && !lost && c->redis) s_took_read(c, jobs_get(c));
            if (!left) return;
        }
        if (jobs_stopping(c) && !c->redis) break; /* connected: NOSCRIPT replies, sent again by EVAL */
    }
    for (int i = 0; i < c->nslots; i++) {
        jobs_slot *sl = &c->slots[i];
        if (sl->state != SL_RECORD) continue;
        titan_log(TITAN_LOG_WARN,
                  "jobs: job %s: stopped before its outcome could be recorded; it stays pending", sl->id);
        jobs_slot_release(c, sl);
    }
}

static bool s_valid_id(const char *id, size_t len)
{
    if (len == 0 || len > MAX_ID_LEN) return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_' && id[i] != '.') return false;
    return true;
}

/* Acts on the start script's reply r for sl (takes r): skip, dead-letter, a broken record (failed),
 * or the request sent to the server. */
static void s_started(titan_jobs_consumer *c, jobs_slot *sl, redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !jobs_is_str(r->element[0])) {
        titan_log(TITAN_LOG_WARN, "jobs: job %s: cannot start it: %s", sl->id,
                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        jobs_slot_release(c, sl);
        return;
    }
    const char *what = r->element[0]->str;
    if (strcmp(what, "skip") == 0) {
        titan_metrics_job(c->metrics, TITAN_JOBS_SKIPPED);
        titan_log_debug("jobs: job %s skipped (%s)", sl->id,
                        jobs_is_str(r->element[1]) ? r->element[1]->str : "?");
        freeReplyObject(r);
        jobs_slot_release(c, sl);
        return;
    }
    if (strcmp(what, "dead") == 0) {
        titan_metrics_job(c->metrics, TITAN_JOBS_DEAD_LETTERED);
        titan_log(TITAN_LOG_WARN, "jobs: job %s moved to %s: %s", sl->id, c->dead,
                  r->elements >= 3 && jobs_is_str(r->element[2]) ? r->element[2]->str : "too many attempts");
        freeReplyObject(r);
        jobs_slot_release(c, sl);
        return;
    }
    sl->attempt = jobs_is_str(r->element[1]) ? atoi(r->element[1]->str) : 0;
    jobs_outcome *o = &sl->o;
    /* The record as the script read it: {"run", attempts, header, nframes, frame:1...} */
    const redisReply *hdr = r->elements > 2 ? r->element[2] : NULL;
    const redisReply *nfr = r->elements > 3 ? r->element[3] : NULL;
    long nf = -1;
    if (jobs_is_str(nfr)) {
        char *end;
        nf = strtol(nfr->str, &end, 10);
        if (end == nfr->str || *end || nf < 0 || nf > MAX_JOB_FRAMES) nf = -1;
    } else if (nfr && nfr->type == REDIS_REPLY_NIL) {
        nf = 0;
    }
    if (!jobs_is_str(hdr)) {
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
        if (!jobs_is_str(r->element[4 + i])) {
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
    jobs_holder *h = calloc(1, sizeof(*h));
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
    if (jobs_stopping(c) || jobs_draining(c)) {
        o->kind = O_REVERT; /* started but not sent: undo the start */
        sl->state = SL_DONE;
        return;
    }
    jobs_dispatch(c, sl);
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
        jobs_lost(c, "out of memory");
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
        jobs_slot *sl = &c->slots[c->order[k]];
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
        jobs_slot *sl = &c->slots[c->order[k]];
        if (sl->state != SL_READ) continue;
        argv[a++] = sl->entry;
        argv[a++] = sl->id;
        sl->state = SL_STARTING;
    }
    int rc = jobs_append(c, a, argv, NULL);
    free(argv);
    return rc == 0 ? n : -1;
}

int jobs_append_read(titan_jobs_consumer *c, int room)
{
    /* The requests come back with their start: about PIPE_BYTES of them at once, one while their size
     * is unknown. */
    int chunk = c->req_bytes > 0 ? (int)(PIPE_BYTES / c->req_bytes) : 1;
    char count[16], maxa[16], now[32], ttl[16], jobkeys[TITAN_REDIS_MAX_PREFIX + 16];
    snprintf(count, sizeof(count), "%d", chunk < 1 ? 1 : chunk < room ? chunk : room);
    snprintf(maxa, sizeof(maxa), "%d", c->max_attempts);
    snprintf(now, sizeof(now), "%lld", (long long)titan_clock_wall_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    titan_redis_key(jobkeys, sizeof(jobkeys), c->prefix, TITAN_REDIS_KEY_JOB, "");
    const char *argv[] = {NULL,
                          NULL,
                          "3",
                          c->stream[S_HIGH],
                          c->stream[S_NORMAL],
                          c->dead,
                          c->group,
                          c->consumer,
                          count,
                          maxa,
                          now,
                          ttl,
                          jobkeys};
    titan_redis_script_args(&c->scripts, TITAN_REDIS_SCRIPT_READ_START, argv, NULL);
    return jobs_append(c, 13, argv, NULL);
}

/* Takes up the read-start script's reply r (frees it): a slot for each job it started, whose request
 * goes to the server (or whose skip, dead letter or broken record is logged and recorded). */
int jobs_take_read(titan_jobs_consumer *c, redisReply *r, double t_read)
{
    int took = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 4 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            !jobs_is_str(e->element[1]) || !jobs_is_str(e->element[2]))
            continue;
        int stream = e->element[0]->integer == 0 ? S_HIGH : S_NORMAL;
        const redisReply *er = e->element[1], *idr = e->element[2];
        took++;
        if (jobs_is_str(e->element[3]) && strcmp(e->element[3]->str, "bad") == 0) {
            titan_log(TITAN_LOG_WARN, "jobs: %s entry %s has no valid job id; acknowledged and skipped",
                      c->stream[stream], er->str);
            continue;
        }
        jobs_slot *sl = er->len < sizeof(sl->entry) && idr->len <= MAX_ID_LEN ? jobs_slot_take(c) : NULL;
        if (!sl) { /* cannot happen: the script reads no more than the free slots */
            titan_log(TITAN_LOG_WARN, "jobs: job %s: started with no slot for it; it stays pending",
                      idr->str);
            continue;
        }
        sl->stream = stream;
        memcpy(sl->entry, er->str, er->len + 1);
        memcpy(sl->id, idr->str, idr->len + 1);
        titan_redis_key(sl->key, sizeof(sl->key), c->prefix, TITAN_REDIS_KEY_JOB, sl->id);
        sl->next_hb = t_read + c->visibility_ms / 3.0;
        /* The slot takes its part of the reply: hiredis frees an array's elements one by one, and skips
         * those set to NULL. */
        redisReply *part = e->element[3];
        e->element[3] = NULL;
        s_started(c, sl, part);
    }
    freeReplyObject(r);
    jobs_finish(c, false); /* broken records, and starts undone */
    return took;
}

/* Step 3 of docs/JOBS.md for the entries of one stream (an XREADGROUP or XAUTOCLAIM list) read
 * from Redis at t_read (monotonic ms): the start scripts go pipelined, then each started job's
 * request goes to the server on its slot. With `reclaimed`, entries already in hand are left
 * alone. Returns how many entries it took up. */
int jobs_start_entries(titan_jobs_consumer *c, int stream, const redisReply *entries, double t_read,
                       bool reclaimed)
{
    int took = 0;
    /* First the entries without anything to run (no usable id, or deleted from the stream): they
     * are acknowledged one by one, before the pipeline. */
    for (size_t i = 0; i < entries->elements && c->redis; i++) {
        const redisReply *entry = entries->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 1 || !jobs_is_str(entry->element[0]))
            continue;
        const redisReply *fields = entry->elements >= 2 ? entry->element[1] : NULL;
        const redisReply *idr = NULL;
        if (fields && fields->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < fields->elements; k += 2)
                if (jobs_is_str(fields->element[k]) && strcmp(fields->element[k]->str, "id") == 0)
                    idr = fields->element[k + 1];
        if (jobs_is_str(idr) && s_valid_id(idr->str, idr->len)) continue;
        if (jobs_stopping(c) || jobs_draining(c)) break;
        titan_log(TITAN_LOG_WARN, "jobs: %s entry %s has no valid job id; acknowledged and skipped",
                  c->stream[stream], entry->element[0]->str);
        redisReply *r =
            jobs_cmdv(c, "XACK", c->stream[stream], c->group, entry->element[0]->str, (char *)NULL);
        if (r) freeReplyObject(r);
        took++;
    }
    char maxa[16], now[32], ttl[16];
    snprintf(maxa, sizeof(maxa), "%d", c->max_attempts);
    snprintf(now, sizeof(now), "%lld", (long long)titan_clock_wall_ms());
    snprintf(ttl, sizeof(ttl), "%d", c->ttl_s);
    int n = 0;
    for (size_t i = 0; i < entries->elements && c->redis; i++) {
        /* An entry not started when we stop stays pending; another worker reclaims it. */
        if (jobs_stopping(c) || jobs_draining(c)) break;
        const redisReply *entry = entries->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements < 1 || !jobs_is_str(entry->element[0]))
            continue;
        const redisReply *er = entry->element[0];
        const redisReply *fields = entry->elements >= 2 ? entry->element[1] : NULL;
        const redisReply *idr = NULL;
        if (fields && fields->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k + 1 < fields->elements; k += 2)
                if (jobs_is_str(fields->element[k]) && strcmp(fields->element[k]->str, "id") == 0)
                    idr = fields->element[k + 1];
        if (!jobs_is_str(idr) || !s_valid_id(idr->str, idr->len) || er->len >= sizeof(c->slots[0].entry))
            continue;
        if (reclaimed) {
            bool mine = false;
            for (int k = 0; k < c->nslots && !mine; k++)
                mine = c->slots[k].state != SL_FREE && c->slots[k].stream == stream &&
                       strcmp(c->slots[k].entry, er->str) == 0;
            if (mine) continue;
        }
        jobs_slot *sl = jobs_slot_take(c);
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
        if (!c->redis || jobs_stopping(c) || jobs_draining(c)) {
            for (int k = next; k < n; k++)
                jobs_slot_release(c, &c->slots[c->order[k]]); /* they stay pending */
            break;
        }
        int chunk = c->req_bytes > 0 ? (int)(PIPE_BYTES / c->req_bytes) : 1;
        int end = chunk < 1 ? next + 1 : chunk >= n - next ? n : next + chunk;
        for (int pass = 0; pass < 2; pass++) { /* a second by EVAL after NOSCRIPT */
            int sent = s_append_start(c, next, end, maxa, now, ttl);
            if (sent <= 0) break;
            redisReply *r = jobs_get(c);
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
                jobs_slot *sl = &c->slots[c->order[k]];
                if (sl->state != SL_STARTING) continue;
                if (!whole) {
                    jobs_slot_release(c, sl); /* Redis went away, or refused: the entry stays pending */
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
            jobs_slot_state st = c->slots[c->order[k]].state;
            if (st == SL_READ || st == SL_STARTING) jobs_slot_release(c, &c->slots[c->order[k]]);
        }
        next = end;
        if (next < n) jobs_heartbeats(c);
    }
    jobs_finish(c, false); /* broken records, and starts undone */
    return took;
}
