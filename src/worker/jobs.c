/* jobs.c - the batch-job consumer (jobs.h): one thread that reads job ids from Redis Streams, keeps up to
 * --jobs-inflight of them running through the worker's own ROUTER (TITAN_SERVER_INPROC) and stores
 * their replies (docs/JOBS.md). This file holds the consumer's life (check, start, watch, stop), its
 * thread's loop and its reading of the queues; jobs_conn.c its Redis connection, jobs_slots.c the jobs
 * in flight and the server, jobs_steps.c a job's steps in Redis; redis.c (libtitan) the URL, the key
 * layout and the scripts. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "jobs_internal.h"
#include "log.h"
#include "server.h"

/* ---- small helpers ---- */

/* True once the worker is stopping: jobs in hand finish, no new one starts. */
bool jobs_draining(titan_jobs_consumer *c)
{
    volatile sig_atomic_t *f = atomic_load(&c->draining);
    if (!c->winding_down && f && *f) {
        c->winding_down = true;
        titan_log(TITAN_LOG_INFO, "jobs: the worker is stopping; taking no more jobs");
    }
    return c->winding_down;
}

/* Sleeps up to ms, in slices, returning early once stop is asked for. */
void jobs_nap(titan_jobs_consumer *c, double ms)
{
    double end = titan_clock_mono_ms() + ms;
    for (;;) {
        double left = end - titan_clock_mono_ms();
        if (left <= 0 || jobs_stopping(c)) return;
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
/* ---- reading the queues ---- */

/* One XAUTOCLAIM step of the reclaim scan, for up to the free slots. Returns 1 when it took up an
 * entry, 0 when the scan of both streams is complete (or must wait), -1 on a Redis failure. */
static int s_reclaim(titan_jobs_consumer *c)
{
    char idle[16], count[16];
    snprintf(idle, sizeof(idle), "%d", c->visibility_ms);
    for (int s = 0; s < 2; s++) {
        while (!c->scanned[s] && !jobs_stopping(c) && !jobs_draining(c) && jobs_room(c, -1) > 0) {
            snprintf(count, sizeof(count), "%d", jobs_room(c, -1));
            redisReply *r = jobs_cmdv(c, "XAUTOCLAIM", c->stream[s], c->group, c->consumer, idle,
                                      c->cursor[s], "COUNT", count, (char *)NULL);
            double t_read = titan_clock_mono_ms();
            if (!r) return -1;
            if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !jobs_is_str(r->element[0]) ||
                r->element[1]->type != REDIS_REPLY_ARRAY) {
                if (titan_redis_reply_is_error(r, "NOGROUP")) {
                    jobs_lost(c, "the consumer group is gone");
                } else {
                    /* Not an outage (a Redis older than 6.2 has no XAUTOCLAIM): keep reading new
                     * entries, and try the scan again later. */
                    titan_log(TITAN_LOG_WARN, "jobs: XAUTOCLAIM on %s failed: %s", c->stream[s],
                              r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
                    c->next_reclaim = titan_clock_mono_ms() + 10 * BACKOFF_MAX_MS;
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
            int got = jobs_start_entries(c, s, entries, t_read, true);
            freeReplyObject(r);
            if (got > 0) return 1;
        }
        if (!c->scanned[s]) return 0; /* no free slot, stopping or draining: go on later */
    }
    if (c->scanned[0] && c->scanned[1]) {
        int every = c->visibility_ms / 4;
        if (every < 50) every = 50;
        if (every > 1000) every = 1000;
        c->next_reclaim = titan_clock_mono_ms() + every;
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
    int room = jobs_room(c, -1) > 0 ? jobs_room(c, -1) : 1;
    redisReply *r = NULL;
    for (int i = 0; i < 2; i++) { /* once more by EVAL after NOSCRIPT */
        r = jobs_append_read(c, room) == 0 ? jobs_get(c) : NULL;
        if (!r || !titan_redis_scripts_missing(&c->scripts, r)) break;
        freeReplyObject(r);
        r = NULL;
    }
    if (r && r->type == REDIS_REPLY_ARRAY) return jobs_take_read(c, r, titan_clock_mono_ms());
    if (r && r->type == REDIS_REPLY_NIL && block) {
        freeReplyObject(r);
        char count[16];
        snprintf(count, sizeof(count), "%d", room);
        long wait = (long)(c->next_reclaim - titan_clock_mono_ms());
        if (wait > BLOCK_MS) wait = BLOCK_MS;
        if (wait < 1) wait = 1; /* BLOCK 0 would wait forever */
        char bl[16];
        snprintf(bl, sizeof(bl), "%ld", wait);
        r = jobs_cmdv(c, "XREADGROUP", "GROUP", c->group, c->consumer, "COUNT", count, "BLOCK", bl, "STREAMS",
                      c->stream[S_HIGH], c->stream[S_NORMAL], ">", ">", (char *)NULL);
    }
    double t_read = titan_clock_mono_ms();
    if (!r) return 0;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strstr(r->str, "NOGROUP")) { /* from the script too, whose error text may wrap it */
            /* The streams were deleted (or Redis came back empty): make the groups again. */
            titan_log(TITAN_LOG_WARN, "jobs: %s; creating the consumer groups again", r->str);
            jobs_ensure_groups(c);
        } else {
            titan_log(TITAN_LOG_WARN, "jobs: XREADGROUP failed: %s", r->str);
            freeReplyObject(r);
            if (c->used > 0)
                jobs_pump(c, BACKOFF_MAX_MS);
            else
                jobs_nap(c, BACKOFF_MAX_MS);
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
            if (st->type != REDIS_REPLY_ARRAY || st->elements < 2 || !jobs_is_str(st->element[0]) ||
                st->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            int s = strcmp(st->element[0]->str, c->stream[S_HIGH]) == 0 ? S_HIGH : S_NORMAL;
            got += jobs_start_entries(c, s, st->element[1], t_read, false);
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
    while (!jobs_stopping(c)) {
        bool draining = jobs_draining(c);
        if (draining && c->used == 0) {
            jobs_nap(c, 100);
            continue;
        }
        if (!draining && jobs_connect(c) != 0) {
            if (c->used > 0) jobs_pump(c, 0);
            continue;
        }
        int got = 0;
        int room = jobs_room(c, -1);
        if (!draining && c->redis && room > 0 && titan_clock_mono_ms() >= c->next_reclaim)
            got = s_reclaim(c) > 0;
        if (!got && !jobs_stopping(c) && !jobs_draining(c) && c->redis && room > 0 &&
            (c->used == 0 || titan_clock_mono_ms() >= c->next_read)) {
            got = s_read(c, c->used == 0);
            /* Nothing new while jobs run: look again a little later, or when one ends. */
            if (got) {
                c->idle_read_ms = IDLE_READ_MIN_MS;
            } else {
                c->next_read = titan_clock_mono_ms() + c->idle_read_ms;
                c->idle_read_ms =
                    c->idle_read_ms * 2 > IDLE_READ_MAX_MS ? IDLE_READ_MAX_MS : c->idle_read_ms * 2;
            }
        }
        if (c->used > 0) {
            double wait = 100;
            if (got) {
                wait = 0;
            } else if (room > 0 && !jobs_draining(c)) {
                double next = c->next_read < c->next_reclaim ? c->next_read : c->next_reclaim;
                wait = next - titan_clock_mono_ms();
                if (wait < 0) wait = 0;
            }
            jobs_pump(c, wait);
        }
    }
    if (c->used > 0) jobs_pump(c, 0); /* replies there are recorded; the rest stays pending */
    jobs_disconnect(c);
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
    snprintf(c->prefix, sizeof(c->prefix), "%s",
             cfg->redis_prefix ? cfg->redis_prefix : TITAN_REDIS_DEFAULT_PREFIX);
    if (!titan_redis_prefix_ok(cfg->redis_prefix ? cfg->redis_prefix : c->prefix) ||
        titan_redis_key(c->stream[S_HIGH], sizeof(c->stream[S_HIGH]), c->prefix, TITAN_REDIS_KEY_QUEUE_HIGH,
                        NULL) < 0 ||
        titan_redis_key(c->stream[S_NORMAL], sizeof(c->stream[S_NORMAL]), c->prefix, TITAN_REDIS_KEY_QUEUE,
                        NULL) < 0 ||
        titan_redis_key(c->dead, sizeof(c->dead), c->prefix, TITAN_REDIS_KEY_DEAD, NULL) < 0) {
        snprintf(err, errcap,
                 "--redis-prefix must be 1 to %d printable characters without spaces, '{' or '}'",
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
    /* The default keeps enough small jobs in hand to hide Redis round trips behind the work; jobs_room
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
    c->dealer = jobs_dealer_open(zmq_ctx);
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
        struct timespec ts = titan_clock_wall_in((int64_t)STOP_GRACE_MS * 1000000);
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
