/* cmd_jobs.c - the submit, job and jobs commands of the titan CLI: batch jobs kept in Redis (docs/JOBS.md).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "jsonscan.h"

#define S_DEFAULT_REDIS "redis://127.0.0.1:6379"
/* Redis refuses bulk strings over 512 MB (proto-max-bulk-len) unless configured otherwise. */
#define S_MAX_REQUEST_BYTES (512u * 1024 * 1024)
#define S_MAX_COUNT 1000000 /* jobs one `titan submit --count` queues */
#define S_DEFAULT_LIST_LIMIT 50
#define S_MAX_LIST_LIMIT 1000000

/* Options every job command takes. */
typedef struct {
    const char *redis;  /* the URL */
    const char *prefix; /* NULL: libtitan's default ("titan") */
} s_redis_opts;

static void s_redis_defaults(s_redis_opts *o)
{
    const char *env = getenv("TITAN_REDIS");
    const char *penv = getenv("TITAN_REDIS_PREFIX");
    o->redis = env && *env ? env : S_DEFAULT_REDIS;
    o->prefix = penv && *penv ? penv : NULL;
}

/* Consumes --redis or --redis-prefix at argv[*i]. Returns 1, 0 (not one) or -1 (usage error printed). */
static int s_redis_option(const char *cmd, s_redis_opts *o, int argc, char **argv, int *i)
{
    const char *v = NULL;
    int r;
    if ((r = cli_match_option(cmd, argc, argv, i, "--redis", &v)) != 0) {
        if (r > 0) o->redis = v;
        return r;
    }
    if ((r = cli_match_option(cmd, argc, argv, i, "--redis-prefix", &v)) != 0) {
        if (r > 0) o->prefix = v;
        return r;
    }
    return 0;
}

/* Makes the job client. Returns CLI_EXIT_OK and *out, or prints why and returns an exit status. */
static int s_jobs_new(const char *cmd, const cli_globals *g, const s_redis_opts *o, titan_jobs **out)
{
    char why[256];
    if (titan_jobs_check_url(o->redis, why, sizeof why) != 0)
        return cli_usage_error(cmd, "bad Redis URL (--redis or TITAN_REDIS): %s", why);
    titan_jobs_opts jo;
    titan_jobs_opts_init(&jo);
    jo.timeout_ms = g->timeout_ms;
    if (o->prefix) jo.prefix = o->prefix;
    titan_jobs *j = titan_jobs_new(o->redis, &jo);
    if (!j) {
        if (errno == EINVAL)
            return cli_usage_error(cmd,
                                   "--redis-prefix must have 1 to %d characters without braces or spaces",
                                   TITAN_JOB_MAX_PREFIX_LEN);
        fprintf(stderr, "titan %s: cannot create the job client: %s\n", cmd, strerror(errno));
        return CLI_EXIT_REMOTE;
    }
    *out = j;
    return CLI_EXIT_OK;
}

/* Returns true for the errors that mean Redis cannot be used at all (exit status 3). */
static bool s_redis_down(int rc)
{
    return rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -ENETUNREACH || rc == -ETIMEDOUT ||
           rc == -ECONNRESET || rc == -EACCES || rc == -EPIPE || rc == -ECONNABORTED || rc == -EADDRNOTAVAIL;
}

/* A stable machine code for a libtitan job error, for --json. */
static const char *s_code(int rc)
{
    switch (rc) {
    case -ENOENT:
        return "not_found";
    case -EACCES:
        return "redis_auth";
    case -ETIMEDOUT:
        return "timeout";
    case -ETIME:
        return "max_wait";
    case -EBUSY:
        return "running";
    case -EALREADY:
        return "ended";
    case -EAGAIN:
        return "pending";
    case -ECANCELED:
        return "cancelled";
    case -EINVAL:
        return "bad_request";
    case -EPROTO:
        return "protocol";
    default:
        return s_redis_down(rc) ? "redis_unreachable" : "local";
    }
}

/* Prints a failure of `what` on `j` to stderr (with advice) and returns its exit status. */
static int s_report(const char *cmd, const titan_jobs *j, int rc)
{
    const char *msg = titan_jobs_last_error(j);
    if (!*msg) msg = strerror(-rc);
    if (rc == -EACCES) {
        fprintf(stderr, "titan %s: %s; put the password in the URL (redis://:PASSWORD@HOST:PORT) or fix it\n",
                cmd, msg);
        return CLI_EXIT_UNREACHABLE;
    }
    if (s_redis_down(rc)) {
        fprintf(stderr,
                "titan %s: %s; is redis-server running? point --redis or TITAN_REDIS at it (default %s)%s\n",
                cmd, msg, S_DEFAULT_REDIS, rc == -ETIMEDOUT ? ", or give a longer --timeout" : "");
        return CLI_EXIT_UNREACHABLE;
    }
    fprintf(stderr, "titan %s: %s\n", cmd, msg);
    return rc == -EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_REMOTE;
}

/* Under --json, prints {"error","code","exit"} for a failure that ends the command; returns `status`. */
static int s_json_failure(const cli_globals *g, const titan_jobs *j, int rc, int status)
{
    if (g->json) {
        const char *msg = titan_jobs_last_error(j);
        cli_print_json(json_pack("{s:s, s:s, s:i}", "error", *msg ? msg : strerror(-rc), "code", s_code(rc),
                                 "exit", status));
    }
    return status;
}

/* Formats Unix ms as UTC ISO 8601 into buf, or "-" for 0. */
static const char *s_time(int64_t ms, char *buf, size_t cap)
{
    if (ms <= 0) return "-";
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&s, &tm)) return "-";
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, cap - n, ".%03dZ", (int)(ms % 1000));
    return buf;
}

/* Checks that every id looks like a job id; prints a usage error for the first that does not. */
static int s_check_ids(const char *cmd, int n, char **ids)
{
    if (n == 0) return cli_usage_error(cmd, "give at least one job id (as printed by `titan submit`)");
    for (int i = 0; i < n; i++) {
        size_t len = strlen(ids[i]);
        bool ok = len == TITAN_JOB_ID_LEN;
        for (size_t k = 0; ok && k < len; k++)
            ok = (ids[i][k] >= '0' && ids[i][k] <= '9') || (ids[i][k] >= 'a' && ids[i][k] <= 'f');
        if (!ok) return cli_usage_error(cmd, "\"%s\" is not a job id (32 lowercase hex characters)", ids[i]);
    }
    return CLI_EXIT_OK;
}

/* --- submit --- */

void cli_help_submit(FILE *f)
{
    fprintf(
        f,
        "usage: titan [global options] submit [--redis URL] [--redis-prefix P] [--priority high|normal]\n"
        "                                     [--idempotency-key K | --count N] REQUEST\n"
        "REQUEST is one of:\n"
        "  --request-file F       a JSON-form request: one JSON header with \"op\", operands as nested\n"
        "                         arrays (PROTOCOL.md 4.3); no binary frames\n"
        "  -                      the same, read from standard input\n"
        "  matmul --m M --k K --n N [--dtype float32|float64] [--seed S]\n"
        "                         a binary matrix_multiply of random matrices, as `titan matmul`\n"
        "                         makes them (same seed, same inputs)\n"
        "\n"
        "Queues the request as a batch job in Redis (docs/JOBS.md) and prints its id. A titan-worker\n"
        "started with --redis runs it; follow it with `titan job status|wait|result ID`.\n"
        "\n"
        "options:\n"
        "  --redis URL            redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (default: $TITAN_REDIS,\n"
        "                         else %s); the global --timeout bounds each Redis call\n"
        "  --redis-prefix P       key prefix, as the worker's --redis-prefix (default: $TITAN_REDIS_PREFIX,\n"
        "                         else titan)\n"
        "  --priority P           high jobs are taken before normal ones (default normal)\n"
        "  --idempotency-key K    submitting twice with the same K (1 to %d bytes) queues one job and\n"
        "                         prints its id both times\n"
        "  --count N              queue N jobs of this same request (1 to %d), pipelined a few hundred\n"
        "                         per Redis round trip; prints their ids one per line (with --json,\n"
        "                         {\"ids\": [...]}); a load generator, and a fast way to fill a queue\n"
        "\n"
        "examples:\n"
        "  titan submit matmul --m 1024 --k 1024 --n 1024\n"
        "  titan submit --priority high --request-file req.json\n"
        "  echo '{\"op\":\"matrix_multiply\",\"a\":[[1,2]],\"b\":[[3],[4]]}' | titan submit -\n"
        "  id=$(titan --json submit --idempotency-key nightly-42 matmul --m 64 --k 64 --n 64 | jq -r .id)\n"
        "  titan submit --count 10000 matmul --m 8 --k 8 --n 8 > ids.txt && titan job wait $(cat ids.txt)\n"
        "\n"
        "exit status: 0 queued (the id is printed); 1 Redis or the request refused it; 2 usage error;\n"
        "3 Redis is unreachable, did not answer in time or refused the password.\n",
        S_DEFAULT_REDIS, TITAN_JOB_MAX_KEY_LEN, S_MAX_COUNT);
}

/* Queues `count` copies of one request in chunks, showing progress on a terminal; prints the ids. */
static int s_submit_count(cli_globals *g, titan_jobs *j, const titan_job_request *req, uint64_t count,
                          const char *prio)
{
    const char *cmd = "submit";
    enum { CHUNK = 4096 };
    size_t n = (size_t)count;
    char(*ids)[TITAN_JOB_ID_LEN + 1] = malloc(n * sizeof *ids);
    titan_job_request *reqs = malloc((n < CHUNK ? n : CHUNK) * sizeof *reqs);
    if (!ids || !reqs) {
        free(ids);
        free(reqs);
        fprintf(stderr, "titan submit: out of memory for %zu job ids; use a smaller --count\n", n);
        return CLI_EXIT_REMOTE;
    }
    for (size_t i = 0; i < (n < CHUNK ? n : CHUNK); i++)
        reqs[i] = *req;
    bool tty = isatty(STDERR_FILENO) && !g->json;
    size_t done = 0;
    int err = 0;
    while (done < n && !err) {
        size_t part = n - done < CHUNK ? n - done : CHUNK, got = 0;
        err = titan_jobs_submit_many(j, reqs, part, ids + done, &got);
        done += got;
        if (tty) fprintf(stderr, "\rtitan submit: %zu of %zu jobs queued", done, n);
    }
    if (tty) fputc('\n', stderr);
    int rc = CLI_EXIT_OK;
    if (err) {
        if (err == -EINVAL)
            rc = cli_usage_error(cmd,
                                 "%s; titan submit takes a JSON-form request: one JSON object with \"op\" "
                                 "and its operands as nested arrays",
                                 titan_jobs_last_error(j));
        else
            rc = s_report(cmd, j, err);
        if (done)
            fprintf(stderr, "titan submit: %zu of %zu jobs were queued before that; their ids follow\n", done,
                    n);
    }
    if (g->json) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < done; i++)
            json_array_append_new(arr, json_string(ids[i]));
        json_t *o = json_pack("{s:o, s:s}", "ids", arr, "priority", prio);
        if (o && err) {
            json_object_set_new(o, "error", json_string(titan_jobs_last_error(j)));
            json_object_set_new(o, "code", json_string(s_code(err)));
            json_object_set_new(o, "exit", json_integer(rc));
        }
        int prc = cli_print_json(o);
        if (rc == CLI_EXIT_OK) rc = prc;
    } else {
        for (size_t i = 0; i < done; i++)
            printf("%s\n", ids[i]);
    }
    free(ids);
    free(reqs);
    return rc;
}

/* Reads all of `f` (at most S_MAX_REQUEST_BYTES) into a malloc'd NUL-terminated buffer. */
static int s_read_all(FILE *f, char **out, size_t *len)
{
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return -ENOMEM;
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) {
            if (ferror(f)) {
                free(buf);
                return -EIO;
            }
            break;
        }
        if (cap >= S_MAX_REQUEST_BYTES) {
            free(buf);
            return -EFBIG;
        }
        cap = cap * 2 > S_MAX_REQUEST_BYTES ? S_MAX_REQUEST_BYTES : cap * 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb) {
            free(buf);
            return -ENOMEM;
        }
        buf = nb;
    }
    /* A full buffer at the cap might have had more behind it. */
    if (n == S_MAX_REQUEST_BYTES && fgetc(f) != EOF) {
        free(buf);
        return -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int cli_cmd_submit(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "submit";
    s_redis_opts ro;
    s_redis_defaults(&ro);
    const char *file = NULL, *key = NULL, *prio = "normal";
    bool from_stdin = false, matmul = false;
    uint64_t dims[3] = {0, 0, 0}, seed = 1, count = 1;
    const char *dim_names[3] = {"--m", "--k", "--n"};
    titan_dtype dt = TITAN_DTYPE_FLOAT32;
    bool matmul_opt = false;

    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r == 0) r = s_redis_option(cmd, &ro, argc, argv, &i);
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--request-file", &v)) > 0) file = v;
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--idempotency-key", &v)) > 0) key = v;
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--count", &v)) > 0 &&
            cli_parse_u64(cmd, "--count", v, 1, S_MAX_COUNT, &count) < 0)
            r = -1;
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--priority", &v)) > 0) {
            if (strcmp(v, "high") != 0 && strcmp(v, "normal") != 0)
                return cli_usage_error(cmd, "--priority must be high or normal, not \"%s\"", v);
            prio = v;
        }
        for (int d = 0; d < 3 && r == 0; d++) {
            r = cli_match_option(cmd, argc, argv, &i, dim_names[d], &v);
            if (r > 0) matmul_opt = true;
            if (r > 0 && cli_parse_u64(cmd, dim_names[d], v, 1, CLI_MAX_DIM, &dims[d]) < 0) r = -1;
        }
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--dtype", &v)) > 0) {
            matmul_opt = true;
            if (cli_parse_dtype(cmd, v, &dt) < 0) r = -1;
        }
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--seed", &v)) > 0) {
            matmul_opt = true;
            if (cli_parse_u64(cmd, "--seed", v, 0, UINT64_MAX, &seed) < 0) r = -1;
        }
        if (r == 0 && strcmp(argv[i], "-") == 0) r = 1, from_stdin = true;
        if (r == 0 && strcmp(argv[i], "matmul") == 0) r = 1, matmul = true;
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 0) return cli_unknown_option(cmd, argv[i]);
    }
    if ((file != NULL) + from_stdin + matmul != 1)
        return cli_usage_error(cmd, "give exactly one request: --request-file F, - (standard input), or "
                                    "matmul --m M --k K --n N; see `titan submit --help`");
    if (matmul_opt && !matmul)
        return cli_usage_error(cmd, "--m, --k, --n, --dtype and --seed belong to `titan submit matmul`");
    if (matmul && (!dims[0] || !dims[1] || !dims[2]))
        return cli_usage_error(
            cmd, "matmul needs --m, --k and --n, e.g. titan submit matmul --m 512 --k 512 --n 512");
    if (key && (!*key || strlen(key) > TITAN_JOB_MAX_KEY_LEN))
        return cli_usage_error(cmd, "--idempotency-key must have 1 to %d bytes", TITAN_JOB_MAX_KEY_LEN);
    if (key && count > 1)
        return cli_usage_error(cmd, "--idempotency-key names one job; leave it out with --count");

    titan_jobs *j = NULL;
    char *header = NULL;
    void *a = NULL, *b = NULL;
    titan_frame frames[2];
    size_t nframes = 0;
    int rc = s_jobs_new(cmd, g, &ro, &j);
    if (rc != CLI_EXIT_OK) return rc;

    if (matmul) {
        size_t m = dims[0], k = dims[1], n = dims[2], es = titan_dtype_size(dt);
        /* Each operand travels as one Redis bulk string. */
        if ((double)m * (double)k * (double)es > S_MAX_REQUEST_BYTES ||
            (double)k * (double)n * (double)es > S_MAX_REQUEST_BYTES) {
            rc = cli_usage_error(cmd,
                                 "an operand over %u MiB does not fit in one Redis value; use smaller sizes",
                                 S_MAX_REQUEST_BYTES >> 20);
            goto out;
        }
        a = malloc(m * k * es);
        b = malloc(k * n * es);
        json_t *h =
            json_pack("{s:s, s:{s:s, s:[I,I], s:i}, s:{s:s, s:[I,I], s:i}}", "op", "matrix_multiply", "a",
                      "dtype", titan_dtype_name(dt), "shape", (json_int_t)m, (json_int_t)k, "frame", 1, "b",
                      "dtype", titan_dtype_name(dt), "shape", (json_int_t)k, (json_int_t)n, "frame", 2);
        header = h ? json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(h);
        if (!a || !b || !header) {
            fprintf(stderr, "titan submit: out of memory for the operands; use smaller --m/--k/--n\n");
            rc = CLI_EXIT_REMOTE;
            goto out;
        }
        uint64_t state = seed;
        cli_fill_random(dt, a, m * k, &state);
        cli_fill_random(dt, b, k * n, &state);
        frames[0] = (titan_frame){a, m * k * es};
        frames[1] = (titan_frame){b, k * n * es};
        nframes = 2;
    } else {
        FILE *f = from_stdin ? stdin : fopen(file, "rb");
        size_t len = 0;
        if (!f) {
            fprintf(stderr, "titan submit: cannot open %s: %s\n", file, strerror(errno));
            rc = CLI_EXIT_USAGE;
            goto out;
        }
        int e = s_read_all(f, &header, &len);
        if (!from_stdin) fclose(f);
        const char *src = from_stdin ? "standard input" : file;
        if (e == -EFBIG) {
            rc = cli_usage_error(cmd, "the request in %s is over %u MiB, more than Redis takes in one value",
                                 src, S_MAX_REQUEST_BYTES >> 20);
            goto out;
        }
        if (e) {
            fprintf(stderr, "titan submit: cannot read %s: %s\n", src, strerror(-e));
            rc = CLI_EXIT_REMOTE;
            goto out;
        }
        if (strlen(header) != len) {
            rc = cli_usage_error(cmd, "the request in %s has a NUL byte; it must be JSON text", src);
            goto out;
        }
    }

    char id[TITAN_JOB_ID_LEN + 1];
    titan_job_priority p = strcmp(prio, "high") == 0 ? TITAN_JOB_HIGH : TITAN_JOB_NORMAL;
    if (count > 1) {
        titan_job_request req = {header, nframes ? frames : NULL, nframes, p, NULL};
        rc = s_submit_count(g, j, &req, count, prio);
        goto out;
    }
    int err = titan_jobs_submit(j, header, frames, nframes, p, key, id);
    if (err == -EINVAL) {
        rc =
            cli_usage_error(cmd,
                            "%s; titan submit takes a JSON-form request: one JSON object with \"op\" and its "
                            "operands as nested arrays",
                            titan_jobs_last_error(j));
        s_json_failure(g, j, err, rc);
        goto out;
    }
    if (err) {
        rc = s_json_failure(g, j, err, s_report(cmd, j, err));
        goto out;
    }
    if (g->json) {
        json_t *o = json_pack("{s:s, s:s}", "id", id, "priority", prio);
        if (o && key) json_object_set_new(o, "idempotency_key", json_string(key));
        rc = cli_print_json(o);
    } else {
        printf("%s\n", id);
    }
out:
    free(header);
    free(a);
    free(b);
    titan_jobs_destroy(&j);
    return rc;
}

/* --- job status|result|wait|cancel --- */

void cli_help_job(FILE *f)
{
    fprintf(
        f, "usage: titan [global options] job status ID...\n"
           "       titan [global options] job result ID... [--out FILE]\n"
           "       titan [global options] job wait ID... [--max-wait MS]\n"
           "       titan [global options] job cancel ID...\n"
           "  (each also takes --redis URL and --redis-prefix P, as `titan submit`)\n"
           "\n"
           "Follows batch jobs queued with `titan submit`.\n"
           "  status   state (queued, running, done, failed, cancelled), priority, attempts, times, the\n"
           "           last error and the worker of the last attempt\n"
           "  result   the reply of an ended job: its JSON header and a summary of its tensors.\n"
           "           --out FILE (one ID only) writes the result tensor as a NumPy .npy file (format 1.0,\n"
           "           little-endian <f4 or <f8, C order, the shape from the reply). A reply with several\n"
           "           tensor frames writes frame 1 to FILE and frame N to FILE.N (before a .npy suffix:\n"
           "           out.npy, out.2.npy, ...). A JSON-form result (nested arrays) is written as <f8.\n"
           "  wait     polls until every job has ended; on a terminal, one progress line is redrawn,\n"
           "           otherwise each change is printed on its own line. --max-wait MS gives up after MS\n"
           "           milliseconds (default: no limit)\n"
           "  cancel   cancels queued jobs; a running job cannot be cancelled\n"
           "\n"
           "examples:\n"
           "  id=$(titan submit matmul --m 256 --k 256 --n 256)\n"
           "  titan job wait $id && titan job result $id --out c.npy\n"
           "  python3 -c 'import numpy; print(numpy.load(\"c.npy\").shape)'\n"
           "  titan job status --json $id | jq .jobs[0].state\n"
           "  titan job wait --max-wait 60000 $(titan jobs list --state queued --ids)\n"
           "\n"
           "exit status: 0 ok (wait: every job done; result: the job is done); 1 a job failed, was\n"
           "cancelled, has not ended (result), is unknown, or cannot be cancelled; 2 usage error;\n"
           "3 Redis is unreachable, did not answer in time or refused the password, or --max-wait passed.\n");
}

/* Adds the record `in` of job `id` to the JSON object `o`. */
static void s_info_json(json_t *o, const char *id, const titan_job_info *in)
{
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "state", json_string(titan_job_state_name(in->state)));
    json_object_set_new(o, "priority", json_string(in->priority == TITAN_JOB_HIGH ? "high" : "normal"));
    json_object_set_new(o, "attempts", json_integer(in->attempts));
    json_object_set_new(o, "created_ms", in->created_ms ? json_integer(in->created_ms) : json_null());
    json_object_set_new(o, "started_ms", in->started_ms ? json_integer(in->started_ms) : json_null());
    json_object_set_new(o, "finished_ms", in->finished_ms ? json_integer(in->finished_ms) : json_null());
    json_object_set_new(o, "error", *in->error ? json_string(in->error) : json_null());
    json_object_set_new(o, "code", *in->code ? json_string(in->code) : json_null());
    json_object_set_new(o, "worker", *in->worker ? json_string(in->worker) : json_null());
}

static int s_job_status(const cli_globals *g, titan_jobs *j, int n, char **ids)
{
    const char *cmd = "job status";
    int status = CLI_EXIT_OK;
    json_t *arr = g->json ? json_array() : NULL;
    for (int i = 0; i < n; i++) {
        titan_job_info in;
        int err = titan_jobs_status(j, ids[i], &in);
        if (err && err != -ENOENT) {
            json_decref(arr);
            return s_json_failure(g, j, err, s_report(cmd, j, err));
        }
        if (err) {
            fprintf(stderr, "titan %s: %s\n", cmd, titan_jobs_last_error(j));
            status = CLI_EXIT_REMOTE;
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "id", ids[i], "error",
                                                 titan_jobs_last_error(j), "code", "not_found"));
            continue;
        }
        /* Like result and wait: a job that failed or was cancelled is exit 1 (OPERATIONS.md). */
        if (in.state == TITAN_JOB_FAILED || in.state == TITAN_JOB_CANCELLED) status = CLI_EXIT_REMOTE;
        if (arr) {
            json_t *o = json_object();
            s_info_json(o, ids[i], &in);
            json_array_append_new(arr, o);
            continue;
        }
        char t1[40], t2[40], t3[40];
        printf("%s %s\n", ids[i], titan_job_state_name(in.state));
        printf("  %-10s %s\n", "priority", in.priority == TITAN_JOB_HIGH ? "high" : "normal");
        printf("  %-10s %d\n", "attempts", in.attempts);
        printf("  %-10s %s\n", "created", s_time(in.created_ms, t1, sizeof t1));
        printf("  %-10s %s\n", "started", s_time(in.started_ms, t2, sizeof t2));
        printf("  %-10s %s\n", "finished", s_time(in.finished_ms, t3, sizeof t3));
        if (*in.worker) printf("  %-10s %s\n", "worker", in.worker);
        if (*in.error) printf("  %-10s %s (code %s)\n", "error", in.error, *in.code ? in.code : "-");
    }
    if (arr) {
        int prc = cli_print_json(json_pack("{s:o}", "jobs", arr));
        if (prc != CLI_EXIT_OK) return prc;
    }
    return status;
}

/* A tensor of the reply: where its bytes are and what they are. */
typedef struct {
    const void *data;
    size_t size;
    titan_dtype dt;
    int64_t shape[TITAN_MAX_RANK];
    int rank;
    void *owned; /* parsed from JSON: free() it */
} s_tensor;

/* Finds the descriptor of binary frame `frame` among the reply header's top-level members. */
static bool s_find_descriptor(json_t *hdr, size_t frame, s_tensor *t)
{
    const char *k;
    json_t *v;
    json_object_foreach(hdr, k, v)
    {
        json_t *fr = json_object_get(v, "frame");
        json_t *shape = json_object_get(v, "shape");
        if (!json_is_integer(fr) || (size_t)json_integer_value(fr) != frame || !json_is_array(shape))
            continue;
        t->dt = titan_dtype_from_name(json_string_value(json_object_get(v, "dtype")));
        t->rank = (int)json_array_size(shape);
        if (t->dt == TITAN_DTYPE_INVALID || t->rank < 1 || t->rank > TITAN_MAX_RANK) return false;
        for (int i = 0; i < t->rank; i++) {
            json_t *d = json_array_get(shape, (size_t)i);
            if (!json_is_integer(d) || json_integer_value(d) < 1) return false;
            t->shape[i] = json_integer_value(d);
        }
        return true;
    }
    return false;
}

/* Writes tensor `t` to `path` as NumPy format 1.0. Returns 0 or -errno. */
static int s_write_npy(const char *path, const s_tensor *t)
{
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     t->dt == TITAN_DTYPE_FLOAT32 ? "<f4" : "<f8");
    for (int i = 0; i < t->rank; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)t->shape[i],
                      i + 1 < t->rank ? " " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* The header (magic, version, length, dict, padding, '\n') fills a multiple of 64 bytes. */
    size_t total = 10 + (size_t)n + 1;
    size_t pad = (64 - total % 64) % 64;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
    size_t hlen = (size_t)n + pad + 1;
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)(hlen >> 8);
    FILE *f = fopen(path, "wb");
    if (!f) return -errno;
    int rc = 0;
    /* The data is little-endian on the wire; this host is too (x86-64, arm64). */
    if (fwrite(pre, 1, sizeof pre, f) != sizeof pre || fwrite(dict, 1, (size_t)n, f) != (size_t)n ||
        fprintf(f, "%*s\n", (int)pad, "") < 0 || (t->size && fwrite(t->data, 1, t->size, f) != t->size))
        rc = -EIO;
    if (fclose(f) != 0 && rc == 0) rc = -errno;
    return rc;
}

/* Returns the name of tensor frame `i` (1-based) for --out FILE: FILE, then FILE.2 (FILE.2.npy for x.npy). */
static char *s_out_name(const char *base, size_t i)
{
    char *s = NULL;
    size_t len = strlen(base);
    int r;
    if (i == 1)
        r = asprintf(&s, "%s", base);
    else if (len > 4 && strcmp(base + len - 4, ".npy") == 0)
        r = asprintf(&s, "%.*s.%zu.npy", (int)(len - 4), base, i);
    else
        r = asprintf(&s, "%s.%zu", base, i);
    return r < 0 ? NULL : s;
}

/* Collects the reply's tensors: its binary frames, or its JSON "result" array. Returns the count, or -1
 * after printing why. */
static int s_collect_tensors(const char *cmd, const char *id, const titan_reply *r, json_t *hdr, s_tensor *ts)
{
    size_t nf = titan_reply_frame_count(r);
    if (nf > TITAN_JOB_MAX_FRAMES) nf = TITAN_JOB_MAX_FRAMES;
    for (size_t i = 0; i < nf; i++) {
        s_tensor *t = &ts[i];
        memset(t, 0, sizeof *t);
        t->data = titan_reply_frame(r, i, &t->size);
        size_t elems = 0;
        if (!hdr || !s_find_descriptor(hdr, i + 1, t) ||
            titan_shape_elems(t->dt, t->shape, t->rank, &elems) ||
            elems * titan_dtype_size(t->dt) != t->size) {
            fprintf(stderr,
                    "titan %s: job %s: result frame %zu has no valid descriptor (dtype, shape) of %zu "
                    "bytes in the reply header\n",
                    cmd, id, i + 1, t->size);
            return -1;
        }
    }
    if (nf) return (int)nf;
    const char *h = titan_reply_header(r), *v = NULL;
    size_t vlen = 0;
    char err[256];
    if (titan_json_find_member(h, strlen(h), "result", SIZE_MAX, &v, &vlen) != 0 || vlen == 0 || v[0] != '[')
        return 0;
    memset(&ts[0], 0, sizeof ts[0]);
    ts[0].dt = TITAN_DTYPE_FLOAT64;
    if (titan_json_parse_tensor(v, vlen, TITAN_DTYPE_FLOAT64, SIZE_MAX / 8, "result", &ts[0].owned,
                                ts[0].shape, &ts[0].rank, err, sizeof err) != 0) {
        fprintf(stderr, "titan %s: job %s: the JSON result is not a numeric array: %s\n", cmd, id, err);
        return -1;
    }
    size_t elems = 0;
    titan_shape_elems(ts[0].dt, ts[0].shape, ts[0].rank, &elems);
    ts[0].data = ts[0].owned;
    ts[0].size = elems * 8;
    return 1;
}

/* Builds a JSON array of tensor summaries. */
static json_t *s_tensors_json(const s_tensor *ts, int n, char **files)
{
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < ts[i].rank; d++)
            json_array_append_new(shape, json_integer(ts[i].shape[d]));
        json_t *o = json_pack("{s:i, s:s, s:o, s:I}", "frame", i + 1, "dtype", titan_dtype_name(ts[i].dt),
                              "shape", shape, "bytes", (json_int_t)ts[i].size);
        if (o && files && files[i]) json_object_set_new(o, "file", json_string(files[i]));
        json_array_append_new(arr, o);
    }
    return arr;
}

static int s_job_result(const cli_globals *g, titan_jobs *j, int n, char **ids, const char *out)
{
    const char *cmd = "job result";
    if (out && n != 1) return cli_usage_error(cmd, "--out takes one job id, not %d", n);
    int status = CLI_EXIT_OK;
    json_t *arr = g->json ? json_array() : NULL;
    for (int i = 0; i < n; i++) {
        titan_reply *r = NULL;
        s_tensor ts[TITAN_JOB_MAX_FRAMES];
        char *files[TITAN_JOB_MAX_FRAMES] = {0};
        int nt = 0;
        int err = titan_jobs_result(j, ids[i], &r);
        if (err && (s_redis_down(err) || err == -EINVAL)) {
            json_decref(arr);
            return s_json_failure(g, j, err, s_report(cmd, j, err));
        }
        if (err) {
            fprintf(stderr, "titan %s: %s%s\n", cmd, titan_jobs_last_error(j),
                    err == -EAGAIN ? "; wait for it with `titan job wait ID`" : "");
            status = CLI_EXIT_REMOTE;
            json_array_append_new(arr, json_pack("{s:s, s:s, s:s}", "id", ids[i], "error",
                                                 titan_jobs_last_error(j), "code", s_code(err)));
            continue;
        }
        const char *h = titan_reply_header(r);
        json_error_t jerr;
        json_t *hdr = json_loads(h, JSON_REJECT_DUPLICATES, &jerr); /* NULL for NaN tokens: fine */
        bool failed = hdr ? json_object_get(hdr, "error") != NULL
                          : (titan_json_find_member(h, strlen(h), "error", SIZE_MAX, &(const char *){0},
                                                    &(size_t){0}) == 0);
        if (failed) {
            status = CLI_EXIT_REMOTE;
            fprintf(stderr, "titan %s: job %s failed: %s\n", cmd, ids[i], h);
        } else if ((nt = s_collect_tensors(cmd, ids[i], r, hdr, ts)) < 0) {
            status = CLI_EXIT_REMOTE;
            nt = 0;
        } else if (out) {
            if (nt == 0) {
                fprintf(stderr, "titan %s: job %s: the reply has no tensor to write to %s\n", cmd, ids[i],
                        out);
                status = CLI_EXIT_REMOTE;
            }
            for (int t = 0; t < nt; t++) {
                int e = -ENOMEM;
                if (!(files[t] = s_out_name(out, (size_t)t + 1)) ||
                    (e = s_write_npy(files[t], &ts[t])) != 0) {
                    fprintf(stderr, "titan %s: cannot write %s: %s\n", cmd, files[t] ? files[t] : out,
                            strerror(-e));
                    status = CLI_EXIT_REMOTE;
                    break;
                }
            }
        }
        if (arr) {
            json_t *o = json_pack("{s:s, s:s}", "id", ids[i], "state", failed ? "failed" : "done");
            json_object_set_new(o, "header", hdr ? json_incref(hdr) : json_string(h));
            json_object_set_new(o, "tensors", s_tensors_json(ts, nt, files));
            json_array_append_new(arr, o);
        } else if (!failed) {
            printf("%s %s\n", ids[i], h);
            for (int t = 0; t < nt; t++) {
                printf("  tensor %d: %s [", t + 1, titan_dtype_name(ts[t].dt));
                for (int d = 0; d < ts[t].rank; d++)
                    printf("%s%lld", d ? ", " : "", (long long)ts[t].shape[d]);
                printf("] (%zu bytes)%s%s\n", ts[t].size, files[t] ? " -> " : "", files[t] ? files[t] : "");
            }
        }
        for (int t = 0; t < nt; t++) {
            free(ts[t].owned);
            free(files[t]);
        }
        json_decref(hdr);
        titan_reply_destroy(&r);
    }
    if (arr) {
        int prc = cli_print_json(json_pack("{s:o}", "jobs", arr));
        if (prc != CLI_EXIT_OK) return prc;
    }
    return status;
}

/* Progress of `job wait`. */
typedef struct {
    bool tty;
    bool json;
    size_t counts[6]; /* by titan_job_state, of the jobs that ended */
    double last_draw;
} s_wait_view;

static void s_draw_bar(s_wait_view *v, size_t ended, size_t total, bool final)
{
    const int width = 30;
    int fill = total ? (int)((double)ended / (double)total * width) : width;
    printf("\r[%.*s%*s] %zu/%zu ended (%zu done, %zu failed, %zu cancelled)", fill,
           "##############################", width - fill, "", ended, total, v->counts[TITAN_JOB_DONE],
           v->counts[TITAN_JOB_FAILED], v->counts[TITAN_JOB_CANCELLED]);
    if (final) printf("\n");
    fflush(stdout);
}

static int s_wait_progress(const char *id, titan_job_state state, size_t ended, size_t total, void *arg)
{
    s_wait_view *v = arg;
    if (titan_job_state_ended(state)) v->counts[state]++;
    if (v->json) return 0;
    if (v->tty) {
        /* Redraw at most 20 times a second, and always at the end. */
        double now = titan_clock_mono_s();
        if (ended == total || now - v->last_draw >= 0.05) {
            s_draw_bar(v, ended, total, false);
            v->last_draw = now;
        }
    } else {
        printf("%s %s (%zu/%zu ended)\n", id, titan_job_state_name(state), ended, total);
        fflush(stdout);
    }
    return 0;
}

static int s_job_wait(const cli_globals *g, titan_jobs *j, int n, char **ids, int max_wait)
{
    const char *cmd = "job wait";
    s_wait_view v = {.tty = isatty(STDOUT_FILENO) == 1, .json = g->json};
    titan_job_state *states = calloc((size_t)n, sizeof *states);
    if (!states) return CLI_EXIT_REMOTE;
    int err = titan_jobs_wait(j, (const char *const *)ids, (size_t)n, max_wait, s_wait_progress, &v, states);
    if (v.tty && !v.json && err != -EINVAL) {
        size_t ended = v.counts[TITAN_JOB_DONE] + v.counts[TITAN_JOB_FAILED] + v.counts[TITAN_JOB_CANCELLED];
        s_draw_bar(&v, ended, (size_t)n, true);
    }
    int rc;
    if (err == -ETIME) {
        rc = CLI_EXIT_UNREACHABLE;
        fprintf(stderr, "titan %s: %s (--max-wait %d)\n", cmd, titan_jobs_last_error(j), max_wait);
        s_json_failure(g, j, err, rc);
    } else if (err) {
        rc = s_json_failure(g, j, err, s_report(cmd, j, err));
    } else {
        rc = CLI_EXIT_OK;
        for (int i = 0; i < n; i++)
            if (states[i] != TITAN_JOB_DONE) rc = CLI_EXIT_REMOTE;
        if (g->json) {
            json_t *arr = json_array();
            for (int i = 0; i < n; i++)
                json_array_append_new(
                    arr, json_pack("{s:s, s:s}", "id", ids[i], "state", titan_job_state_name(states[i])));
            json_t *o =
                json_pack("{s:o, s:I, s:I, s:I}", "jobs", arr, "done", (json_int_t)v.counts[TITAN_JOB_DONE],
                          "failed", (json_int_t)v.counts[TITAN_JOB_FAILED], "cancelled",
                          (json_int_t)v.counts[TITAN_JOB_CANCELLED]);
            int prc = cli_print_json(o);
            if (prc != CLI_EXIT_OK) rc = prc;
        } else if (rc != CLI_EXIT_OK) {
            fprintf(stderr, "titan %s: %zu failed, %zu cancelled; see `titan job status ID`\n", cmd,
                    v.counts[TITAN_JOB_FAILED], v.counts[TITAN_JOB_CANCELLED]);
        }
    }
    free(states);
    return rc;
}

static int s_job_cancel(const cli_globals *g, titan_jobs *j, int n, char **ids)
{
    const char *cmd = "job cancel";
    int status = CLI_EXIT_OK;
    json_t *arr = g->json ? json_array() : NULL;
    for (int i = 0; i < n; i++) {
        int err = titan_jobs_cancel(j, ids[i]);
        if (err && (s_redis_down(err) || err == -EINVAL)) {
            json_decref(arr);
            return s_json_failure(g, j, err, s_report(cmd, j, err));
        }
        if (err) {
            status = CLI_EXIT_REMOTE;
            fprintf(stderr, "titan %s: %s\n", cmd, titan_jobs_last_error(j));
        } else if (!arr) {
            printf("%s cancelled\n", ids[i]);
        }
        if (arr)
            json_array_append_new(arr, err ? json_pack("{s:s, s:b, s:s, s:s}", "id", ids[i], "cancelled", 0,
                                                       "error", titan_jobs_last_error(j), "code", s_code(err))
                                           : json_pack("{s:s, s:b}", "id", ids[i], "cancelled", 1));
    }
    if (arr) {
        int prc = cli_print_json(json_pack("{s:o}", "jobs", arr));
        if (prc != CLI_EXIT_OK) return prc;
    }
    return status;
}

int cli_cmd_job(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "job";
    if (argc < 1)
        return cli_usage_error(cmd,
                               "give a subcommand: status, result, wait or cancel; see `titan job --help`");
    const char *sub = argv[0];
    bool is_status = strcmp(sub, "status") == 0, is_result = strcmp(sub, "result") == 0,
         is_wait = strcmp(sub, "wait") == 0, is_cancel = strcmp(sub, "cancel") == 0;
    if (!is_status && !is_result && !is_wait && !is_cancel)
        return cli_usage_error(cmd, "unknown subcommand \"%s\"; use status, result, wait or cancel", sub);
    char sub_cmd[32];
    snprintf(sub_cmd, sizeof sub_cmd, "job %s", sub);
    s_redis_opts ro;
    s_redis_defaults(&ro);
    const char *out = NULL;
    int max_wait = -1;
    char **ids = calloc((size_t)argc, sizeof *ids);
    int nids = 0, rc;
    if (!ids) return CLI_EXIT_REMOTE;
    for (int i = 1; i < argc; i++) {
        const char *v = NULL;
        uint64_t ms;
        int r = cli_global_option(sub_cmd, g, argc, argv, &i);
        if (r == 0) r = s_redis_option(sub_cmd, &ro, argc, argv, &i);
        if (r == 0 && is_result && (r = cli_match_option(sub_cmd, argc, argv, &i, "--out", &v)) > 0) out = v;
        if (r == 0 && is_wait && (r = cli_match_option(sub_cmd, argc, argv, &i, "--max-wait", &v)) > 0) {
            if (cli_parse_u64(sub_cmd, "--max-wait", v, 0, INT32_MAX, &ms) < 0)
                r = -1;
            else
                max_wait = (int)ms;
        }
        if (r == 0 && argv[i][0] != '-') r = 1, ids[nids++] = argv[i];
        if (r < 0) {
            free(ids);
            return CLI_EXIT_USAGE;
        }
        if (r == 0) {
            free(ids);
            return cli_unknown_option(sub_cmd, argv[i]);
        }
    }
    titan_jobs *j = NULL;
    if ((rc = s_check_ids(sub_cmd, nids, ids)) != CLI_EXIT_OK ||
        (rc = s_jobs_new(sub_cmd, g, &ro, &j)) != CLI_EXIT_OK)
        goto out;
    if (is_status)
        rc = s_job_status(g, j, nids, ids);
    else if (is_result)
        rc = s_job_result(g, j, nids, ids, out);
    else if (is_wait)
        rc = s_job_wait(g, j, nids, ids, max_wait);
    else
        rc = s_job_cancel(g, j, nids, ids);
out:
    titan_jobs_destroy(&j);
    free(ids);
    return rc;
}

/* --- jobs list --- */

void cli_help_jobs(FILE *f)
{
    fprintf(f,
            "usage: titan [global options] jobs list [--state S] [--limit N] [--ids] [--redis URL]\n"
            "                                        [--redis-prefix P]\n"
            "\n"
            "Lists jobs, newest first: id, state, priority, attempts, creation time and error code.\n"
            "Jobs whose record has expired (--result-ttl of the worker) are left out.\n"
            "\n"
            "options:\n"
            "  --state S    only jobs in state S: queued, running, done, failed or cancelled (default: all)\n"
            "  --limit N    at most N jobs, 0 for no limit (default %d)\n"
            "  --ids        print the ids only, one a line (for `titan job wait $(...)`)\n"
            "\n"
            "examples:\n"
            "  titan jobs list\n"
            "  titan jobs list --state failed --limit 10\n"
            "  titan jobs list --json | jq -r '.jobs[].id'\n"
            "\n"
            "exit status: 0 ok; 2 usage error; 3 Redis is unreachable or did not answer in time.\n",
            S_DEFAULT_LIST_LIMIT);
}

typedef struct {
    json_t *arr;
    bool ids_only;
    bool titled; /* the table's title line is out */
} s_list_view;

static int s_list_one(const char *id, const titan_job_info *in, void *arg)
{
    s_list_view *v = arg;
    if (v->arr) {
        json_t *o = json_object();
        s_info_json(o, id, in);
        json_array_append_new(v->arr, o);
    } else if (v->ids_only) {
        printf("%s\n", id);
    } else {
        char t[40];
        if (!v->titled)
            printf("%-32s  %-9s  %-6s  %8s  %-24s  %s\n", "ID", "STATE", "PRIO", "ATTEMPTS", "CREATED (UTC)",
                   "CODE");
        v->titled = true;
        printf("%s  %-9s  %-6s  %8d  %-24s  %s\n", id, titan_job_state_name(in->state),
               in->priority == TITAN_JOB_HIGH ? "high" : "normal", in->attempts,
               s_time(in->created_ms, t, sizeof t), *in->code ? in->code : "-");
    }
    return 0;
}

int cli_cmd_jobs(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "jobs list";
    int start = 0;
    if (argc > 0 && argv[0][0] != '-') {
        if (strcmp(argv[0], "list") != 0)
            return cli_usage_error("jobs", "unknown subcommand \"%s\"; the one there is: list", argv[0]);
        start = 1;
    }
    s_redis_opts ro;
    s_redis_defaults(&ro);
    uint64_t limit = S_DEFAULT_LIST_LIMIT;
    int state = TITAN_JOB_ANY;
    s_list_view v = {0};
    for (int i = start; i < argc; i++) {
        const char *val = NULL;
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r == 0) r = s_redis_option(cmd, &ro, argc, argv, &i);
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--state", &val)) > 0) {
            state = titan_job_state_from_name(val);
            if (state < 0 || (state == TITAN_JOB_ANY && strcmp(val, "any") != 0))
                return cli_usage_error(
                    cmd, "--state must be queued, running, done, failed or cancelled, not \"%s\"", val);
        }
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--limit", &val)) > 0 &&
            cli_parse_u64(cmd, "--limit", val, 0, S_MAX_LIST_LIMIT, &limit) < 0)
            r = -1;
        if (r == 0 && strcmp(argv[i], "--ids") == 0) r = 1, v.ids_only = true;
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 0) return cli_unknown_option(cmd, argv[i]);
    }
    titan_jobs *j = NULL;
    int rc = s_jobs_new(cmd, g, &ro, &j);
    if (rc != CLI_EXIT_OK) return rc;
    v.arr = g->json ? json_array() : NULL;
    int n = titan_jobs_list(j, (titan_job_state)state, (size_t)limit, s_list_one, &v);
    if (n < 0) {
        json_decref(v.arr);
        rc = s_json_failure(g, j, n, s_report(cmd, j, n));
    } else if (v.arr) {
        rc = cli_print_json(json_pack("{s:o, s:i}", "jobs", v.arr, "count", n));
    } else if (n == 0 && !v.ids_only) {
        fprintf(stderr, "titan %s: no jobs%s%s\n", cmd, state != TITAN_JOB_ANY ? " in state " : "",
                state != TITAN_JOB_ANY ? titan_job_state_name((titan_job_state)state) : "");
    }
    titan_jobs_destroy(&j);
    return rc;
}
