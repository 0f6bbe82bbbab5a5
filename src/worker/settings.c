/* settings.c - titan-worker's settings table, and the command line, config file and --help it drives. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "redis.h"
#include "settings.h"

static int s_check_endpoint(const char *name, const char *v, char *err, size_t errcap);
static int s_check_key_name(const char *name, const char *v, char *err, size_t errcap);
static int s_check_redis_prefix(const char *name, const char *v, char *err, size_t errcap);
static int s_check_http(const char *name, const char *v, char *err, size_t errcap);

static const char *const s_log_levels[] = {"error", "warn", "warning", "info", "debug", NULL};

#define S_AT(field) offsetof(titan_config, field)

/* One row per setting, in --help's order. A new setting is a row here and its field in titan_config; its
 * option, config key, checks, default and help follow, and tests/unit/test_settings.c then asks for its
 * row in docs/OPERATIONS.md. Rows read best as written, not one field a line: */
// clang-format off
static const titan_setting s_table[] = {
    {.name = "bind", .type = TITAN_SETTING_LIST, .offset = S_AT(binds), .count_offset = S_AT(nbinds),
     .hi = TITAN_MAX_BINDS, .unit = "endpoints", .def = "tcp://127.0.0.1:5555", .check = s_check_endpoint,
     .metavar = "ENDPOINT",
     .help = "listen here; repeatable (default tcp://127.0.0.1:5555;\n"
             "tcp://127.0.0.1:* picks a free port)"},
    /* Checked when the backend is chosen (backends/select.c): an unusable device is exit status 1. */
    {.name = "device", .type = TITAN_SETTING_TEXT, .offset = S_AT(device), .def = "auto", .metavar = "DEV",
     .help = "auto | cpu | cuda | cuda:N (default auto: the best available)"},
    {.name = "threads", .type = TITAN_SETTING_INT, .offset = S_AT(threads), .lo = 1, .hi = 256, .metavar = "N",
     .help = "executor threads serving requests at once (default: one per core)"},
    {.name = "blas-threads", .type = TITAN_SETTING_INT, .offset = S_AT(blas_threads), .lo = 1, .hi = 1024,
     .metavar = "N", .help = "BLAS threads for each product (default: all cores)"},
    {.name = "queue", .alias = "max-queue", .type = TITAN_SETTING_INT, .offset = S_AT(queue), .lo = 0,
     .hi = 1000000, .def = "64", .metavar = "N",
     .help = "requests that may wait for an executor before the worker\n"
             "answers \"busy\" (default 64)"},
    {.name = "max-client-share", .type = TITAN_SETTING_INT, .offset = S_AT(max_client_share), .lo = 1, .hi = 100,
     .unit = "percent", .def = "50", .metavar = "PCT",
     .help = "the part of the queue one client may fill (default 50), so a\n"
             "flooding client cannot starve the others"},
    {.name = "max-request-bytes", .type = TITAN_SETTING_U64, .offset = S_AT(max_request_bytes), .lo = 1ULL << 10,
     .hi = 1ULL << 40, .unit = "bytes", .def = "1G", .metavar = "N",
     .help = "largest request accepted, K/M/G suffixes (default 1G)"},
    {.name = "max-result-bytes", .type = TITAN_SETTING_U64, .offset = S_AT(max_result_bytes), .lo = 1ULL << 10,
     .hi = 1ULL << 40, .unit = "bytes", .def = "1G", .metavar = "N", .help = "largest result computed (default 1G)"},
    {.name = "max-inflight-bytes", .type = TITAN_SETTING_U64, .offset = S_AT(max_inflight_bytes),
     .lo = 1ULL << 10, .hi = 1ULL << 42, .unit = "bytes", .def = "4G", .metavar = "N",
     .help = "request bytes held at once, queued and running, before the\n"
             "worker answers \"busy\" (default 4G)"},
    {.name = "max-unread-mb", .type = TITAN_SETTING_U64, .offset = S_AT(max_unread_mb), .lo = 1, .hi = 1ULL << 20,
     .unit = "MiB", .def = "256", .metavar = "N",
     .help = "replies one client may leave unread, in MiB, before its heavy\n"
             "requests are answered \"busy\" (default 256)"},
    {.name = "log-level", .type = TITAN_SETTING_ENUM, .offset = S_AT(log_level), .def = "info",
     .choices = s_log_levels, .metavar = "LEVEL",
     .help = "error | warn | info | debug (default info; debug logs every request)"},
    /* CURVE files are read, and refused with exit status 1, when the server starts (auth.c). */
    {.name = "curve-secret", .type = TITAN_SETTING_TEXT, .offset = S_AT(curve_secret), .metavar = "FILE",
     .help = "turn on CurveZMQ: the worker's secret certificate (titan keygen)"},
    {.name = "allow-keys", .type = TITAN_SETTING_TEXT, .offset = S_AT(allow_keys), .metavar = "DIR",
     .help = "admit only clients whose public certificates are in DIR; the\n"
             "directory is re-read while running (add or revoke keys live)"},
    {.name = "insecure", .type = TITAN_SETTING_FLAG, .offset = S_AT(insecure), .def = "false",
     .help = "allow binding beyond loopback without CURVE (warns)"},
    {.name = "drain-timeout", .type = TITAN_SETTING_INT, .offset = S_AT(drain_timeout_ms), .lo = 0, .hi = 3600000,
     .unit = "ms", .def = "30000", .metavar = "MS",
     .help = "on SIGTERM, how long running requests may finish (default 30000)"},
    /* ZeroMQ caps the heartbeat TTL (3 intervals) at 6553500 ms. */
    {.name = "heartbeat", .type = TITAN_SETTING_INT, .offset = S_AT(heartbeat_ms), .lo = 0, .hi = 2000000,
     .unit = "ms", .def = "5000", .metavar = "MS",
     .help = "ZMTP heartbeat interval; dead peers drop after 3x (default 5000, 0 off)"},
    {.name = "endpoint-file", .type = TITAN_SETTING_TEXT, .offset = S_AT(endpoint_file), .metavar = "PATH",
     .help = "write the bound endpoints here once ready (for scripts and tests)"},
    {.name = "http", .type = TITAN_SETTING_TEXT, .offset = S_AT(http), .check = s_check_http,
     .metavar = "[ADDR:]PORT",
     .help = "serve /healthz, /readyz, /metrics (Prometheus) and the /v1 API\n"
             "over HTTP; off by default; PORT alone listens on 127.0.0.1, ADDR is\n"
             "IPv4 or [IPv6]; port 0 picks a free one (logged and in --endpoint-file)"},
    /* The /v1 API (docs/OPERATIONS.md, "HTTP API"); the token file is read when HTTP starts (exit status 1). */
    {.name = "http-max-body-kb", .type = TITAN_SETTING_INT, .offset = S_AT(http_max_body_kb), .lo = 1,
     .hi = 1048576, .unit = "KiB", .def = "8192", .metavar = "N",
     .help = "largest /v1 request body, in KiB (default 8192); the bodies held\n"
             "at once take at most 8 times it"},
    {.name = "http-max-inflight", .type = TITAN_SETTING_INT, .offset = S_AT(http_max_inflight), .lo = 1,
     .hi = 1024, .def = "64", .metavar = "N",
     .help = "/v1 requests with the server at once; more are answered 429\n"
             "(default 64)"},
    {.name = "http-token", .type = TITAN_SETTING_TEXT, .offset = S_AT(http_token), .metavar = "FILE",
     .help = "every /v1 request needs Authorization: Bearer with one of FILE's\n"
             "tokens (one a line; re-read when it changes); needed to serve /v1\n"
             "beyond loopback"},
    {.name = "insecure-http", .type = TITAN_SETTING_FLAG, .offset = S_AT(insecure_http), .def = "false",
     .help = "serve /v1 to clients beyond loopback without a token (warns)"},
    /* The URL is checked with the job consumer's own parser (titan_jobs_consumer_check, in main.c). */
    {.name = "redis", .type = TITAN_SETTING_TEXT, .offset = S_AT(redis_url), .metavar = "URL",
     .help = "also run batch jobs from Redis Streams (docs/JOBS.md):\n"
             "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; off by default"},
    {.name = "redis-password", .type = TITAN_SETTING_TEXT, .offset = S_AT(redis_password), .metavar = "P",
     .help = "Redis password; overrides the URL's (prefer the config file)"},
    {.name = "redis-prefix", .type = TITAN_SETTING_TEXT, .offset = S_AT(redis_prefix), .def = "titan",
     .check = s_check_redis_prefix, .metavar = "NAME", .help = "job keys are {NAME}:... (default titan)"},
    {.name = "jobs-group", .type = TITAN_SETTING_TEXT, .offset = S_AT(jobs_group), .def = "titan-workers",
     .check = s_check_key_name, .metavar = "G",
     .help = "the Redis consumer group of the workers (default titan-workers)"},
    {.name = "visibility-timeout", .type = TITAN_SETTING_INT, .offset = S_AT(visibility_timeout_ms), .lo = 100,
     .hi = 86400000, .unit = "ms", .def = "60000", .metavar = "MS",
     .help = "a job pending this long on a worker that stopped answering is\n"
             "run by another worker (default 60000)"},
    {.name = "max-attempts", .type = TITAN_SETTING_INT, .offset = S_AT(max_attempts), .lo = 1, .hi = 1000,
     .def = "3", .metavar = "N", .help = "starts of one job before it goes to {NAME}:dead (default 3)"},
    {.name = "result-ttl", .type = TITAN_SETTING_INT, .offset = S_AT(result_ttl_s), .lo = 1, .hi = 315360000,
     .unit = "s", .def = "86400", .metavar = "S",
     .help = "seconds a job's record and result are kept once it ended\n"
             "(default 86400)"},
    {.name = "jobs-inflight", .type = TITAN_SETTING_INT, .offset = S_AT(jobs_inflight), .lo = 1, .hi = 256,
     .metavar = "N",
     .help = "jobs the consumer keeps in hand at once, 1 to 256 (default 16,\n"
             "or the executors if more); enough keeps small jobs flowing past\n"
             "Redis round trips; capped at the executors plus the queue share;\n"
             "no more are taken while --max-inflight-bytes are in hand"},
    {.name = "models", .type = TITAN_SETTING_TEXT, .offset = S_AT(models), .metavar = "DIR",
     .help = "serve the models of DIR's NAME.model.json manifests (inference,\n"
             "list_models, load_model, unload_model); off by default"},
    {.name = "max-models", .type = TITAN_SETTING_INT, .offset = S_AT(max_models), .lo = 1, .hi = 256, .def = "8",
     .metavar = "N",
     .help = "models loaded at once; beyond, the least recently used is\n"
             "unloaded (default 8)"},
    {.name = "model-memory-mb", .type = TITAN_SETTING_U64, .offset = S_AT(model_memory_mb), .lo = 1,
     .hi = 1ULL << 24, .unit = "MiB", .def = "4096", .metavar = "N",
     .help = "budget of the loaded models, estimated from their files' sizes\n"
             "(default 4096)"},
    {.name = "tensor-memory-mb", .type = TITAN_SETTING_U64, .offset = S_AT(tensor_memory_mb), .lo = 0,
     .hi = 1ULL << 30, .unit = "MiB", .def = "0", .metavar = "N",
     .help = "memory for resident tensors (tensor_put, matrix_multiply \"keep\"),\n"
             "all clients together (default 0: half the GPU's memory, a\n"
             "quarter of RAM on the CPU); going over is an error, never an eviction"},
    {.name = "tensor-quota-mb", .type = TITAN_SETTING_U64, .offset = S_AT(tensor_quota_mb), .lo = 0,
     .hi = 1ULL << 30, .unit = "MiB", .def = "0", .metavar = "N",
     .help = "one client's share of it (default 0: all of it)"},
    {.name = "max-tensors", .type = TITAN_SETTING_INT, .offset = S_AT(max_tensors), .lo = 0, .hi = 1000000,
     .def = "4096", .metavar = "N", .help = "resident tensors one client may hold (default 4096; 0: none)"},
    {.name = "tensor-ttl", .type = TITAN_SETTING_INT, .offset = S_AT(tensor_ttl_s), .lo = 0, .hi = 315360000,
     .unit = "s", .def = "0", .metavar = "S",
     .help = "free resident tensors no request used for S seconds (default 0:\n"
             "keep them until tensor_free or a restart)"},
    {.name = "tensor-orphan-ttl", .type = TITAN_SETTING_INT, .offset = S_AT(tensor_orphan_ttl_s), .lo = 0,
     .hi = 315360000, .unit = "s", .def = "600", .metavar = "S",
     .help = "without CURVE, free a client's resident tensors S seconds after its\n"
             "connection closed, unless it reconnects with the same routing id\n"
             "(default 600; 0: keep them)"},
    {.name = "max-worker-tensors", .type = TITAN_SETTING_INT, .offset = S_AT(max_worker_tensors), .lo = 0,
     .hi = 16777216, .def = "65536", .metavar = "N",
     .help = "resident tensors all clients together may hold (default 65536)"},
    {.name = "pool-cache-mb", .type = TITAN_SETTING_U64, .offset = S_AT(pool_cache_mb), .lo = 0, .hi = 1ULL << 30,
     .unit = "MiB", .def = "0", .metavar = "N",
     .help = "CUDA: free device memory kept for reuse, so that steady state does\n"
             "not allocate (default 0: a quarter of the GPU's memory)"},
    {.name = "host-pool-mb", .type = TITAN_SETTING_U64, .offset = S_AT(host_pool_mb), .lo = 0, .hi = 1ULL << 30,
     .unit = "MiB", .def = "256", .metavar = "N",
     .help = "free host memory kept for tensor buffers (results, operands),\n"
             "so that steady state does not fault in fresh pages (default 256;\n"
             "0: none, every buffer is allocated and freed)"},
};
// clang-format on

#define S_NSETTINGS (sizeof(s_table) / sizeof(s_table[0]))

const titan_setting *titan_settings_table(size_t *n)
{
    *n = S_NSETTINGS;
    return s_table;
}

const titan_setting *titan_settings_find(const char *name)
{
    for (size_t i = 0; i < S_NSETTINGS; i++) {
        if (strcmp(name, s_table[i].name) == 0 || (s_table[i].alias && strcmp(name, s_table[i].alias) == 0))
            return &s_table[i];
    }
    return NULL;
}

/* ---- checks beyond the type ---- */

static int s_check_endpoint(const char *name, const char *v, char *err, size_t errcap)
{
    (void)name;
    /* Anything else is ZeroMQ's to judge when the worker binds (exit status 1). */
    if (strstr(v, "://")) return 0;
    snprintf(err, errcap, "bad endpoint '%s': expected e.g. tcp://127.0.0.1:5555 or ipc:///run/titan.sock", v);
    return -EINVAL;
}

/* The Redis prefix goes between braces (a Redis Cluster hash tag): the Redis module's rule, which the job client
 * and titan status apply too. */
static int s_check_redis_prefix(const char *name, const char *v, char *err, size_t errcap)
{
    if (titan_redis_prefix_ok(v)) return 0;
    snprintf(err, errcap, "--%s must be 1 to %d printable characters without spaces, '{' or '}', not '%s'", name,
             TITAN_REDIS_MAX_PREFIX, v);
    return -EINVAL;
}

/* The consumer group goes into commands. */
static int s_check_key_name(const char *name, const char *v, char *err, size_t errcap)
{
    size_t n = strlen(v);
    bool ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++) ok = isgraph((unsigned char)v[i]) && v[i] != '{' && v[i] != '}';
    if (ok) return 0;
    snprintf(err, errcap, "--%s must be 1 to 64 printable characters without spaces, '{' or '}', not '%s'", name, v);
    return -EINVAL;
}

static int s_check_http(const char *name, const char *v, char *err, size_t errcap)
{
    (void)name;
    return titan_http_parse_listen(v, NULL, err, errcap) != 0 ? -EINVAL : 0;
}

/* ---- values ---- */

/* A decimal number with an optional K, M or G suffix (powers of 1024, either case). Returns 0, -EINVAL
 * for what is no number, or -ERANGE outside lo..hi. */
static int s_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!*s || *s == '-' || isspace((unsigned char)*s)) return -EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return -EINVAL;
    uint64_t mult = 1;
    if (*end == 'K' || *end == 'k') mult = 1ULL << 10;
    else if (*end == 'M' || *end == 'm') mult = 1ULL << 20;
    else if (*end == 'G' || *end == 'g') mult = 1ULL << 30;
    if (mult != 1) end++;
    if (*end) return -EINVAL;
    uint64_t r;
    if (__builtin_mul_overflow((uint64_t)v, mult, &r) || r < lo || r > hi) return -ERANGE;
    *out = r;
    return 0;
}

static int s_set_number(const titan_setting *s, const char *name, void *field, const char *v, char *err, size_t errcap)
{
    uint64_t u;
    int rc = s_parse_u64(v, s->lo, s->hi, &u);
    if (rc) {
        bool bytes = s->unit && strcmp(s->unit, "bytes") == 0;
        snprintf(err, errcap, "--%s %s: %s %llu to %llu%s%s%s", name, v,
                 rc == -ERANGE ? "must be" : "not a number; must be", (unsigned long long)s->lo,
                 (unsigned long long)s->hi, s->unit ? " " : "", s->unit ? s->unit : "",
                 bytes ? " (K, M and G suffixes are powers of 1024)" : "");
        return -EINVAL;
    }
    if (s->type == TITAN_SETTING_INT) *(int *)field = (int)u;
    else *(uint64_t *)field = u;
    return 0;
}

static int s_set_flag(const char *name, bool *field, const char *v, char *err, size_t errcap)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "1") == 0) *field = true;
    else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 || strcmp(v, "0") == 0) *field = false;
    else {
        snprintf(err, errcap, "%s must be true or false, not '%s'", name, v);
        return -EINVAL;
    }
    return 0;
}

static int s_set_enum(const titan_setting *s, const char *name, char **field, const char *v, char *err, size_t errcap)
{
    for (const char *const *c = s->choices; *c; c++) {
        if (strcmp(v, *c) != 0) continue;
        char *copy = strdup(v);
        if (!copy) return -ENOMEM;
        free(*field);
        *field = copy;
        return 0;
    }
    /* "--log-level must be error, warn, info or debug, not 'x'" */
    size_t len = (size_t)snprintf(err, errcap, "--%s must be ", name);
    for (const char *const *c = s->choices; *c && len < errcap; c++)
        len += (size_t)snprintf(err + len, errcap - len, "%s%s", *c, !c[1] ? "" : !c[2] ? " or " : ", ");
    if (len < errcap) snprintf(err + len, errcap - len, ", not '%s'", v);
    return -EINVAL;
}

/* Sets s from v; errors name the setting as the user wrote it (name: its name or its alias). */
static int s_set(const titan_setting *s, const char *name, titan_config *cfg, const char *v, char *err, size_t errcap)
{
    void *field = (char *)cfg + s->offset;
    if (s->check && (s->type == TITAN_SETTING_TEXT || s->type == TITAN_SETTING_LIST)) {
        int rc = s->check(name, v, err, errcap);
        if (rc) return rc;
    }
    switch (s->type) {
    case TITAN_SETTING_LIST: {
        int *count = (int *)((char *)cfg + s->count_offset);
        if ((uint64_t)*count >= s->hi) {
            snprintf(err, errcap, "at most %llu --%s %s", (unsigned long long)s->hi, name, s->unit);
            return -EINVAL;
        }
        char *copy = strdup(v);
        if (!copy) return -ENOMEM;
        ((char **)field)[(*count)++] = copy;
        return 0;
    }
    case TITAN_SETTING_TEXT: {
        char *copy = strdup(v);
        if (!copy) return -ENOMEM;
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case TITAN_SETTING_ENUM:
        return s_set_enum(s, name, field, v, err, errcap);
    case TITAN_SETTING_FLAG:
        return s_set_flag(name, field, v, err, errcap);
    case TITAN_SETTING_INT:
    case TITAN_SETTING_U64:
        return s_set_number(s, name, field, v, err, errcap);
    }
    return -EINVAL;
}

static void s_clear_list(const titan_setting *s, titan_config *cfg)
{
    char **items = (char **)((char *)cfg + s->offset);
    int *count = (int *)((char *)cfg + s->count_offset);
    for (int i = 0; i < *count; i++) {
        free(items[i]);
        items[i] = NULL;
    }
    *count = 0;
}

int titan_settings_set(titan_config *cfg, const char *name, const char *value, char *err, size_t errcap)
{
    const titan_setting *s = titan_settings_find(name);
    if (!s) {
        snprintf(err, errcap, "unknown setting '%s'", name);
        return -ENOENT;
    }
    if (!value) {
        snprintf(err, errcap, "--%s needs a value", name);
        return -EINVAL;
    }
    return s_set(s, name, cfg, value, err, errcap);
}

int titan_settings_init(titan_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    char err[256];
    for (size_t i = 0; i < S_NSETTINGS; i++) {
        const titan_setting *s = &s_table[i];
        if (!s->def || s->type == TITAN_SETTING_LIST) continue;
        int rc = s_set(s, s->name, cfg, s->def, err, sizeof(err));
        if (rc == -ENOMEM) return rc;
        /* A default that its own setting refuses is a mistake in the table. */
        if (rc) {
            fprintf(stderr, "titan-worker: bad default in the settings table: %s\n", err);
            abort();
        }
    }
    return 0;
}

void titan_settings_free(titan_config *cfg)
{
    for (size_t i = 0; i < S_NSETTINGS; i++) {
        const titan_setting *s = &s_table[i];
        if (s->type == TITAN_SETTING_LIST) s_clear_list(s, cfg);
        else if (s->type == TITAN_SETTING_TEXT || s->type == TITAN_SETTING_ENUM)
            free(*(char **)((char *)cfg + s->offset));
    }
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- the config file ---- */

static char *s_trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

int titan_settings_load(titan_config *cfg, const char *path, char *err, size_t errcap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        snprintf(err, errcap, "cannot open config file %s: %s", path, strerror(e));
        return -e;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *s = s_trim(line);
        if (!*s) continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errcap, "%s:%d: expected 'key = value'", path, lineno);
            rc = -EINVAL;
            break;
        }
        *eq = '\0';
        char *key = s_trim(s), *val = s_trim(eq + 1);
        char why[384];
        rc = titan_settings_set(cfg, key, val, why, sizeof(why));
        if (rc) {
            if (rc == -ENOMEM) snprintf(why, sizeof(why), "out of memory");
            snprintf(err, errcap, "%s:%d: %s", path, lineno, why);
            rc = rc == -ENOMEM ? rc : -EINVAL;
            break;
        }
    }
    fclose(f);
    return rc;
}

/* ---- the command line ---- */

/* getopt_long's values: a setting is S_OPT_SETTING plus its index in the table. */
enum { S_OPT_CONFIG = 1000, S_OPT_VERSION, S_OPT_SETTING };

int titan_settings_parse_args(titan_config *cfg, int argc, char **argv, titan_settings_action *action, char *err,
                              size_t errcap)
{
    /* Each setting by its name and its alias, then the three options that are no setting. */
    struct option longopts[2 * S_NSETTINGS + 4];
    size_t n = 0;
    for (size_t i = 0; i < S_NSETTINGS; i++) {
        int has_arg = s_table[i].type == TITAN_SETTING_FLAG ? no_argument : required_argument;
        longopts[n++] = (struct option){s_table[i].name, has_arg, NULL, S_OPT_SETTING + (int)i};
        if (s_table[i].alias)
            longopts[n++] = (struct option){s_table[i].alias, has_arg, NULL, S_OPT_SETTING + (int)i};
    }
    longopts[n++] = (struct option){"config", required_argument, NULL, S_OPT_CONFIG};
    longopts[n++] = (struct option){"version", no_argument, NULL, S_OPT_VERSION};
    longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[n] = (struct option){NULL, 0, NULL, 0};

    /* The command line's settings are kept, in order, and applied over the file's afterwards. */
    struct {
        const titan_setting *s;
        const char *name; /* as written: the name or the alias */
        const char *value;
    } *given = calloc((size_t)argc + 1, sizeof(*given));
    if (!given) {
        snprintf(err, errcap, "out of memory");
        return -ENOMEM;
    }
    size_t ngiven = 0;
    const char *config_path = NULL;
    int rc = 0, c, at;
    err[0] = '\0';
    *action = TITAN_SETTINGS_RUN;
    optind = 0; /* a fresh scan, also after an earlier call */
    while ((c = getopt_long(argc, argv, "h", longopts, &at)) != -1) {
        if (c == 'h' || c == S_OPT_VERSION) {
            /* At once, as where it stands on the line: what follows is not looked at. */
            *action = c == 'h' ? TITAN_SETTINGS_HELP : TITAN_SETTINGS_VERSION;
            goto out;
        } else if (c == S_OPT_CONFIG) {
            config_path = optarg;
        } else if (c >= S_OPT_SETTING && c < S_OPT_SETTING + (int)S_NSETTINGS) {
            const titan_setting *s = &s_table[c - S_OPT_SETTING];
            given[ngiven].s = s;
            given[ngiven].name = longopts[at].name;
            given[ngiven++].value = s->type == TITAN_SETTING_FLAG ? "true" : optarg;
        } else {
            rc = -EINVAL; /* getopt_long said why */
            goto out;
        }
    }
    if (optind < argc) {
        snprintf(err, errcap, "unexpected argument '%s'", argv[optind]);
        rc = -EINVAL;
        goto out;
    }
    if (config_path && (rc = titan_settings_load(cfg, config_path, err, errcap)) != 0) goto out;
    /* A list on the command line replaces the file's rather than adding to it. */
    for (size_t i = 0; i < ngiven; i++) {
        bool first = true;
        for (size_t j = 0; j < i; j++) first &= given[j].s != given[i].s;
        if (first && given[i].s->type == TITAN_SETTING_LIST) s_clear_list(given[i].s, cfg);
    }
    for (size_t i = 0; i < ngiven; i++) {
        rc = s_set(given[i].s, given[i].name, cfg, given[i].value, err, errcap);
        if (rc) goto out;
    }
    for (size_t i = 0; i < S_NSETTINGS; i++) {
        const titan_setting *s = &s_table[i];
        if (s->type == TITAN_SETTING_LIST && s->def && *(int *)((char *)cfg + s->count_offset) == 0 &&
            (rc = s_set(s, s->name, cfg, s->def, err, errcap)) != 0)
            goto out;
    }
out:
    if (rc == -ENOMEM) snprintf(err, errcap, "out of memory");
    free(given);
    return rc;
}

/* ---- --help ---- */

/* "  --NAME METAVAR" in 26 columns, then the text; its further lines start at column 28. */
static void s_print_entry(FILE *f, const char *label, const char *text)
{
    fprintf(f, "  %-24s ", label);
    for (const char *p = text;;) {
        const char *nl = strchr(p, '\n');
        if (!nl) {
            fprintf(f, "%s\n", p);
            return;
        }
        fprintf(f, "%.*s\n%27s", (int)(nl - p), p, "");
        p = nl + 1;
    }
}

void titan_settings_print_help(FILE *f)
{
    fputs("Usage: titan-worker [OPTIONS]\n"
          "Serves GPU (or CPU) compute over ZeroMQ: ping, gpu_info, ops, matrix_multiply.\n"
          "\n"
          "Options:\n",
          f);
    for (size_t i = 0; i < S_NSETTINGS; i++) {
        const titan_setting *s = &s_table[i];
        char label[128];
        int len = snprintf(label, sizeof(label), "--%s%s%s", s->name, s->metavar ? " " : "",
                           s->metavar ? s->metavar : "");
        if (s->alias)
            snprintf(label + len, sizeof(label) - (size_t)len, ", --%s%s%s", s->alias, s->metavar ? " " : "",
                     s->metavar ? s->metavar : "");
        s_print_entry(f, label, s->help);
    }
    s_print_entry(f, "--config FILE",
                  "read settings from FILE: 'key = value' lines with the option\n"
                  "names above (bind may repeat); command-line options win");
    s_print_entry(f, "--version", "print the version and exit");
    s_print_entry(f, "-h, --help", "print this help and exit");
    fputs("\n"
          "Examples:\n"
          "  titan-worker                                  # CPU or GPU, on tcp://127.0.0.1:5555\n"
          "  titan-worker --bind tcp://0.0.0.0:5555 --curve-secret worker_secret --allow-keys clients/\n"
          "  titan ping                                    # from another shell\n",
          f);
}
