/* jobs_conn.c - the job consumer's Redis connection: connecting (the module's open and login, then PING,
 * the consumer groups and the scripts) with backoff, outages logged once, and pipelined commands. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "jobs_internal.h"
#include "log.h"

void jobs_disconnect(titan_jobs_consumer *c)
{
    pthread_mutex_lock(&c->lock);
    redisContext *r = c->redis;
    c->redis = NULL;
    pthread_mutex_unlock(&c->lock);
    c->scripts.loaded = false;
    if (r) redisFree(r);
}

/* Logs the start of an outage once, and drops the connection. */
void jobs_lost(titan_jobs_consumer *c, const char *why)
{
    if (!c->outage) {
        c->outage = true;
        c->outage_since = titan_clock_mono_ms();
        titan_log(TITAN_LOG_WARN, "jobs: redis %s is unavailable (%s); retrying until it is back",
                  c->url_text, why);
    }
    titan_metrics_set_jobs_redis_up(c->metrics, false);
    jobs_disconnect(c);
}

/* Reads the reply to the oldest command sent and not yet answered. Returns it (the caller frees; an
 * error reply included), or NULL when the connection failed, which it then drops, together with the
 * replies still owed to later commands. */
redisReply *jobs_get(titan_jobs_consumer *c)
{
    if (!c->redis) return NULL;
    void *v = NULL;
    if (redisGetReply(c->redis, &v) != REDIS_OK || !v) {
        char why[160];
        snprintf(why, sizeof(why), "%s", c->redis->errstr[0] ? c->redis->errstr : "connection lost");
        jobs_lost(c, why);
        return NULL;
    }
    redisReply *r = v;
    if (titan_redis_reply_is_unavailable(r)) {
        /* Redis is up but cannot serve yet (reading its AOF after a restart): an outage too. */
        jobs_lost(c, r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Queues a command, to be sent with the next jobs_get (pipelining). Returns 0, or -1 when
 * disconnected or out of memory (the connection is then dropped: its pipeline is incomplete). */
int jobs_append(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens)
{
    if (!c->redis) return -1;
    if (redisAppendCommandArgv(c->redis, argc, argv, lens) != REDIS_OK) {
        jobs_lost(c, "out of memory");
        return -1;
    }
    return 0;
}

/* Runs one command. Returns the reply (the caller frees; an error reply included), or NULL when
 * the connection failed, which it then drops. Never call it with replies still owed (jobs_append). */
redisReply *jobs_cmd(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens)
{
    if (jobs_append(c, argc, argv, lens) != 0) return NULL;
    return jobs_get(c);
}

/* The same with NUL-terminated arguments, NULL-terminated list. */
redisReply *jobs_cmdv(titan_jobs_consumer *c, ...)
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
    return jobs_cmd(c, argc, argv, lens);
}

/* Creates the consumer group on both queues; an existing group is fine. Returns 0 or -1. */
int jobs_ensure_groups(titan_jobs_consumer *c)
{
    for (int s = 0; s < 2; s++) {
        /* From 0, not $: jobs submitted before any worker ever ran must still be served. */
        redisReply *r =
            jobs_cmdv(c, "XGROUP", "CREATE", c->stream[s], c->group, "0", "MKSTREAM", (char *)NULL);
        if (!r) return -1;
        if (titan_redis_reply_is_error(r, NULL) && !titan_redis_reply_is_error(r, "BUSYGROUP")) {
            /* e.g. WRONGTYPE: the key exists and is not a stream. Retried like an outage. */
            char why[300];
            snprintf(why, sizeof(why), "cannot create consumer group %s on %s: %s", c->group, c->stream[s],
                     r->str);
            freeReplyObject(r);
            jobs_lost(c, why);
            return -1;
        }
        freeReplyObject(r);
    }
    return 0;
}

/* Connects (AUTH, SELECT, groups) when disconnected, sleeping the backoff first after a failure.
 * Returns 0 when connected. */
int jobs_connect(titan_jobs_consumer *c)
{
    if (c->redis) return 0;
    double now = titan_clock_mono_ms();
    if (now < c->next_connect) {
        jobs_nap(c, c->next_connect - now);
        if (jobs_stopping(c)) return -1;
    }
    titan_redis_timeouts t = {
        .connect_ms = CONNECT_TIMEOUT_MS, .command_ms = COMMAND_TIMEOUT_MS, .keepalive = true};
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
            redisReply *rep = jobs_cmdv(c, "PING", (char *)NULL);
            if (rep && rep->type == REDIS_REPLY_ERROR)
                snprintf(why, sizeof(why), "%s", rep->str);
            else if (!rep)
                snprintf(why, sizeof(why), "connection lost");
            if (rep) freeReplyObject(rep);
        }
        if (!why[0] && jobs_ensure_groups(c) != 0) snprintf(why, sizeof(why), "consumer groups not created");
        /* Without the scripts (SCRIPT refused, say) they go by EVAL. */
        int lrc = !why[0] && c->redis ? titan_redis_scripts_load(c->redis, &c->scripts) : 0;
        if (lrc != 0) titan_redis_io_error(c->redis, -lrc, COMMAND_TIMEOUT_MS, why, sizeof(why));
    } else if (!why[0]) {
        snprintf(why, sizeof(why), "cannot connect");
    }
    if (why[0]) {
        jobs_lost(c, why);
        c->next_connect = titan_clock_mono_ms() + c->backoff_ms;
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
        return -1;
    }
    if (c->outage)
        titan_log(TITAN_LOG_INFO, "jobs: redis %s is back after %.1f s", c->url_text,
                  (titan_clock_mono_ms() - c->outage_since) / 1e3);
    c->outage = false;
    titan_metrics_set_jobs_redis_up(c->metrics, true);
    c->backoff_ms = BACKOFF_MIN_MS;
    c->next_connect = 0;
    return 0;
}
