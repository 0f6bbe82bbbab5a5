/* jobs.h - libtitan's Redis job client: submit protocol requests as batch jobs, follow them, fetch results.
 */
#ifndef TITAN_JOBS_H
#define TITAN_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include "titan/export.h"
#include "titan/client.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The Redis key layout and the job life cycle are docs/JOBS.md. A titan_jobs object owns one
 * Redis connection and is not thread-safe: use one per thread. */
typedef struct titan_jobs titan_jobs;

#define TITAN_JOB_ID_LEN 32       /* job ids are 32 lowercase hex characters */
#define TITAN_JOB_MAX_FRAMES 15   /* tensor frames per request or reply (PROTOCOL.md §2) */
#define TITAN_JOB_MAX_KEY_LEN 256 /* longest idempotency key */
#define TITAN_JOB_MAX_PREFIX_LEN 64

typedef enum {
    TITAN_JOB_NORMAL = 0,
    TITAN_JOB_HIGH = 1,
} titan_job_priority;

typedef enum {
    TITAN_JOB_ANY = 0, /* a filter that matches every state; never a job's state */
    TITAN_JOB_QUEUED,
    TITAN_JOB_RUNNING,
    TITAN_JOB_DONE,
    TITAN_JOB_FAILED,
    TITAN_JOB_CANCELLED,
} titan_job_state;

typedef struct {
    const char *prefix;   /* key prefix, without braces: keys are "{PREFIX}:..."; default "titan";
                           * 1..64 characters, none of "{}" or spaces */
    const char *password; /* overrides the URL's password; NULL: the URL's (or none) */
    int timeout_ms;       /* connect and per-command timeout; default 5000; 1..3600000 */
    int result_ttl_s;     /* TTL a job record gets when titan_jobs_cancel ends it; default 86400;
                           * the same as titan-worker's --result-ttl */
} titan_jobs_opts;

typedef struct {
    titan_job_state state;
    titan_job_priority priority;
    int attempts;                                /* times a worker started it */
    int64_t created_ms, started_ms, finished_ms; /* Unix time in ms; 0 when not (yet) set */
    char error[512];                             /* the last error text; "" when none */
    char code[32];                               /* the last error code; "" when none */
    char worker[128];                            /* the consumer of the last attempt; "" when none */
} titan_job_info;

/* Called by titan_jobs_wait each time it sees a job in a new state (the first poll reports every job).
 * `ended` of `total` jobs have ended so far. Return 0 to go on waiting, nonzero to stop. */
typedef int (*titan_jobs_wait_fn)(const char *id, titan_job_state state, size_t ended, size_t total,
                                  void *arg);
/* Called by titan_jobs_list for each job, newest first. Return 0 for the next one, nonzero to stop. */
typedef int (*titan_jobs_list_fn)(const char *id, const titan_job_info *info, void *arg);

/* Fills `opts` with the defaults above. */
TITAN_API void titan_jobs_opts_init(titan_jobs_opts *opts);

/* Returns a job client for `redis_url`, "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]" (PORT defaults
 * to 6379, DB to 0; HOST may be an [IPv6] literal; the password may use %XX escapes), or NULL with
 * errno set: EINVAL for a malformed URL or option, ENOMEM. `opts` may be NULL. Connecting is lazy:
 * an unreachable Redis shows up on the first call. */
TITAN_API titan_jobs *titan_jobs_new(const char *redis_url, const titan_jobs_opts *opts);
/* Checks `redis_url` as titan_jobs_new does. Returns 0, or -EINVAL with a sentence saying what is wrong
 * (and what a good URL looks like) in why[0..cap), NUL-terminated; `why` may be NULL. */
TITAN_API int titan_jobs_check_url(const char *redis_url, char *why, size_t cap);
/* Closes the connection and frees; takes NULL, sets *j to NULL. */
TITAN_API void titan_jobs_destroy(titan_jobs **j);

/* Errors common to every call below: -EINVAL (bad argument, malformed id), -ECONNREFUSED,
 * -EHOSTUNREACH (no such host), -ETIMEDOUT (no answer within timeout_ms), -ECONNRESET (connection lost),
 * -EACCES (Redis refused the password or needs one), -EPROTO (Redis answered an error, or the data
 * breaks docs/JOBS.md), -ENOMEM. A lost connection is remade on the next call.
 * titan_jobs_last_error says more. */

/* Queues the request `header_json` (a JSON object with "op") plus `nframes` (<= 15) tensor frames
 * as a job of `priority`. With an `idempotency_key` (1..256 bytes, no NUL) already used, returns the
 * existing job's id and queues nothing. Returns 0 and the NUL-terminated id in id_out, or -errno. */
TITAN_API int titan_jobs_submit(titan_jobs *j, const char *header_json, const titan_frame *frames,
                                size_t nframes, titan_job_priority priority, const char *idempotency_key,
                                char id_out[TITAN_JOB_ID_LEN + 1]);

/* One request of a titan_jobs_submit_many batch: the arguments of titan_jobs_submit. */
typedef struct {
    const char *header_json;
    const titan_frame *frames;
    size_t nframes;
    titan_job_priority priority;
    const char *idempotency_key; /* NULL: none */
} titan_job_request;

/* Queues the n requests `reqs` as titan_jobs_submit would, pipelined (a few hundred per round trip),
 * and writes their ids to ids_out[0..n). Nothing is sent unless every request is well formed (-EINVAL
 * names the first bad one). Returns 0, or -errno with *submitted (may be NULL) set to how many
 * submissions Redis confirmed, in order: ids_out[0..*submitted) are queued; after a connection failure
 * some of the others may be queued too, so resubmit them with idempotency keys to be certain. */
TITAN_API int titan_jobs_submit_many(titan_jobs *j, const titan_job_request *reqs, size_t n,
                                     char (*ids_out)[TITAN_JOB_ID_LEN + 1], size_t *submitted);

/* Fills *out with the job's record. Returns 0, -ENOENT for an unknown (or expired) job, or -errno. */
TITAN_API int titan_jobs_status(titan_jobs *j, const char *id, titan_job_info *out);

/* Returns 0 and the reply of an ended job in *reply (the caller's; free with titan_reply_destroy):
 * for `done`, the worker's result; for `failed`, the worker's error reply, or one made from the
 * record's error and code ({"error":...,"code":...}) when the job failed without a reply.
 * -EAGAIN: the job has not ended yet; -ECANCELED: it was cancelled; -ENOENT: unknown; or -errno. */
TITAN_API int titan_jobs_result(titan_jobs *j, const char *id, titan_reply **reply);

/* Cancels a queued job (state cancelled; the record then expires after result_ttl_s). Returns 0,
 * -EBUSY when it is running, -EALREADY when it has ended, -ENOENT when unknown, or -errno. */
TITAN_API int titan_jobs_cancel(titan_jobs *j, const char *id);

/* Polls the states of the n jobs `ids` until every one has ended (done, failed or cancelled), calling
 * `fn` (may be NULL) on each change. timeout_ms < 0 waits without limit. Returns 0 and, when `states`
 * is not NULL, the final states in states[0..n); -ETIME when jobs were still pending after timeout_ms
 * (unlike -ETIMEDOUT, which means Redis did not answer); -ECANCELED when `fn` asked to stop; -ENOENT when a
 * job is unknown; or -errno. */
TITAN_API int titan_jobs_wait(titan_jobs *j, const char *const *ids, size_t n, int timeout_ms,
                              titan_jobs_wait_fn fn, void *arg, titan_job_state *states);

/* Calls `fn` for up to `max` jobs (0: no limit) in state `filter` (TITAN_JOB_ANY: all), newest first,
 * from the index. Jobs whose record has expired are skipped. Returns the number of jobs passed to `fn`,
 * or -errno. */
TITAN_API int titan_jobs_list(titan_jobs *j, titan_job_state filter, size_t max, titan_jobs_list_fn fn,
                              void *arg);

/* The last error's description (Redis's own text where it gave one); "" after a success. Borrowed;
 * valid until the next call on `j`. */
TITAN_API const char *titan_jobs_last_error(const titan_jobs *j);

/* Returns the name of `s` ("queued"...; "any" for TITAN_JOB_ANY), or NULL for an invalid value. */
TITAN_API const char *titan_job_state_name(titan_job_state s);
/* Returns the state called `name`, or -1 (as int) when there is none. "any" gives TITAN_JOB_ANY. */
TITAN_API int titan_job_state_from_name(const char *name);
/* Returns true (1) when `s` is done, failed or cancelled. */
TITAN_API int titan_job_state_ended(titan_job_state s);

#ifdef __cplusplus
}
#endif

#endif
