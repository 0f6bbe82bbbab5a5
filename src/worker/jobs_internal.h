/* jobs_internal.h - what the files of the worker's job consumer share (jobs.c, jobs_conn.c, jobs_slots.c,
 * jobs_steps.c): its settings, the consumer object, the slots that hold jobs in flight, and the functions
 * each file offers the others. Not for the rest of the worker: jobs.h is the consumer's interface. */
#ifndef TITAN_WORKER_JOBS_INTERNAL_H
#define TITAN_WORKER_JOBS_INTERNAL_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <hiredis/hiredis.h>
#include <zmq.h>

#include "clock.h"
#include "jobs.h"
#include "metrics.h"
#include "redis.h"
#include "request.h"

#define BLOCK_MS 500 /* longest XREADGROUP BLOCK: bounds how long stop waits */
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

typedef struct jobs_slot jobs_slot; /* one job in flight */

struct titan_jobs_consumer {
    pthread_t thread;
    bool started;
    atomic_int stop;
    pthread_mutex_t lock; /* guards `redis` against the shutdown() in titan_jobs_consumer_stop */
    redisContext *redis;  /* NULL while disconnected */
    void *zmq_ctx;        /* borrowed */
    void *dealer;         /* the thread's socket to TITAN_SERVER_INPROC */
    jobs_slot *slots;     /* 2 x inflight: a blocking read of both streams may return COUNT entries of each */
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

/* Keeps the Redis reply that holds a job's request frames alive while ZeroMQ messages point
 * into it: the slot holds one reference, and each message sent holds one. */
typedef struct {
    atomic_int refs;
    redisReply *reply;
} jobs_holder;

typedef enum { O_DONE, O_FAILED, O_RETRY, O_REVERT, O_ABANDON } jobs_outcome_kind;

typedef struct {
    jobs_outcome_kind kind;
    zmq_msg_t frames[MAX_REPLY_FRAMES]; /* the reply body: header, tensor frames */
    int nframes;
    char code[32];
    char error[512];
} jobs_outcome;

/* A slot's life: FREE -> READ (its entry is ours, not started yet) -> STARTING (its start script
 * is in the pipeline) -> SENT (the request is with the server) <-> BUSY (answered "busy": sent
 * again at retry_at) -> DONE (the outcome is known and waits to be recorded) -> RECORD (logged,
 * its outcome on its way to Redis) -> FREE.
 * All requests go over the one DEALER, each behind a routing frame "jSLOT.SEQ" that the server's
 * reply carries back (an envelope, docs/PROTOCOL.md): SEQ changes with every use of the slot, so a
 * late reply to an abandoned request never lands on the slot's next job. For the server's fair
 * queue the jobs are one client, as they were with one job at a time. */
typedef enum { SL_FREE, SL_READ, SL_STARTING, SL_SENT, SL_BUSY, SL_DONE, SL_RECORD } jobs_slot_state;

struct jobs_slot {
    jobs_slot_state state;
    unsigned seq; /* this use of the slot, in its routing frame */
    int stream;
    char entry[48]; /* the stream entry id: "MS-SEQ", at most 41 characters */
    char id[MAX_ID_LEN + 1];
    char key[MAX_ID_LEN + 128];
    double next_hb;  /* when the entry's idle time must be reset next (monotonic ms) */
    double retry_at; /* BUSY: when to send the request again */
    int attempt;
    jobs_holder *h; /* the start script's reply: the request header and frames */
    redisReply *parts[1 + MAX_JOB_FRAMES];
    int nparts;
    jobs_outcome o;
};

/* ---- small helpers, inline ---- */

static inline bool jobs_stopping(titan_jobs_consumer *c)
{
    return atomic_load(&c->stop) != 0;
}

static inline bool jobs_is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* ---- jobs.c: the consumer's life and its reading of the queues ---- */

/* True once the worker is stopping: jobs in hand finish, no new one starts (logged once). */
bool jobs_draining(titan_jobs_consumer *c);
/* Sleeps up to ms, in slices, returning early once stop is asked for. */
void jobs_nap(titan_jobs_consumer *c, double ms);

/* ---- jobs_conn.c: the consumer's Redis connection ---- */

/* Connects (AUTH, SELECT, PING, groups, scripts) when disconnected, sleeping the backoff first after
 * a failure. Returns 0 when connected, -1 otherwise (the outage is logged once). */
int jobs_connect(titan_jobs_consumer *c);
/* Drops the connection (under c->lock, for titan_jobs_consumer_stop's shutdown). */
void jobs_disconnect(titan_jobs_consumer *c);
/* Logs the start of an outage once (why), and drops the connection. */
void jobs_lost(titan_jobs_consumer *c, const char *why);
/* Queues a command, to be sent with the next jobs_get (pipelining); lens NULL: NUL-terminated
 * arguments. Returns 0, or -1 when disconnected or out of memory (the connection is then dropped). */
int jobs_append(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens);
/* Reads the reply to the oldest command sent and not yet answered. Returns it (the caller frees; an
 * error reply included), or NULL when the connection failed or Redis cannot serve yet (LOADING...),
 * which it then drops, together with the replies still owed to later commands. */
redisReply *jobs_get(titan_jobs_consumer *c);
/* Runs one command (never with replies still owed): jobs_append, then jobs_get. */
redisReply *jobs_cmd(titan_jobs_consumer *c, int argc, const char **argv, const size_t *lens);
/* The same with NUL-terminated arguments, a NULL-terminated list (at most 16). */
redisReply *jobs_cmdv(titan_jobs_consumer *c, ...);
/* Creates the consumer group on both queues; an existing group is fine. Returns 0 or -1. */
int jobs_ensure_groups(titan_jobs_consumer *c);

/* ---- jobs_slots.c: the slots and the worker's server ---- */

/* Drops a reference to h, freeing the Redis reply with the last. */
void jobs_holder_release(jobs_holder *h);
/* How many more jobs the consumer may take up now (jobs_slots.c says why it may be fewer), counting
 * the slots in state as_free (-1: none) as free. */
int jobs_room(const titan_jobs_consumer *c, int as_free);
/* A DEALER connected to TITAN_SERVER_INPROC, or NULL. */
void *jobs_dealer_open(void *zmq_ctx);
/* A free slot, now READ, or NULL when none is free. */
jobs_slot *jobs_slot_take(titan_jobs_consumer *c);
/* Frees sl (its outcome, its request's reply). */
void jobs_slot_release(titan_jobs_consumer *c, jobs_slot *sl);
/* Sends the request of sl: SENT, BUSY (the inproc pipe is full: as good as busy), or given up. */
void jobs_dispatch(titan_jobs_consumer *c, jobs_slot *sl);
/* Replaces a failed DEALER; the jobs waiting on the old one are given up (left pending). */
void jobs_reset_dealer(titan_jobs_consumer *c, int err);
/* Serves the slots in flight for up to wait_ms: busy requests sent again, replies collected,
 * heartbeats, outcomes recorded. */
void jobs_pump(titan_jobs_consumer *c, double wait_ms);

/* ---- jobs_steps.c: a job's steps in Redis (start, heartbeat, outcome) ---- */

/* Starts the entries of one stream read at t_read (monotonic ms); `reclaimed` leaves entries already in
 * hand alone. Returns how many entries it took up. */
int jobs_start_entries(titan_jobs_consumer *c, int stream, const redisReply *entries, double t_read,
                       bool reclaimed);
/* Queues the read-start script (redis.h) for up to room new entries (fewer when they would pass about
 * PIPE_BYTES of requests). Returns 0, or -1 with the connection dropped. */
int jobs_append_read(titan_jobs_consumer *c, int room);
/* Takes up the read-start script's reply r (frees it), read at t_read. Returns how many entries it took. */
int jobs_take_read(titan_jobs_consumer *c, redisReply *r, double t_read);
/* Resets the idle time of the entries in hand that are due (pipelined). */
void jobs_heartbeats(titan_jobs_consumer *c);
/* Logs and records the outcome of every DONE slot, then frees them; with and_read, reads for the slots
 * this frees in the same round trip. */
void jobs_finish(titan_jobs_consumer *c, bool and_read);

#endif
