/* config.c - parses and validates titan-worker settings. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "http.h"

void titan_config_init(titan_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->queue = 64;
    cfg->max_request_bytes = 1ULL << 30;
    cfg->max_result_bytes = 1ULL << 30;
    cfg->max_inflight_bytes = 4ULL << 30;
    cfg->max_unread_mb = 256;
    cfg->drain_timeout_ms = 30000;
    cfg->heartbeat_ms = 5000;
    cfg->max_client_share = 50;
    cfg->visibility_timeout_ms = 60000;
    cfg->max_attempts = 3;
    cfg->result_ttl_s = 86400;
    cfg->max_models = 8;
    cfg->model_memory_mb = 4096;
    cfg->max_tensors = 4096;
    cfg->tensor_orphan_ttl_s = 600;
    cfg->max_worker_tensors = 65536;
}

void titan_config_free(titan_config *cfg)
{
    for (int i = 0; i < cfg->nbinds; i++) free(cfg->binds[i]);
    free(cfg->device);
    free(cfg->log_level);
    free(cfg->endpoint_file);
    free(cfg->curve_secret);
    free(cfg->allow_keys);
    free(cfg->redis_url);
    free(cfg->redis_password);
    free(cfg->redis_prefix);
    free(cfg->jobs_group);
    free(cfg->http);
    free(cfg->models);
    memset(cfg, 0, sizeof(*cfg));
}

static int s_parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!s || !*s || *s == '-' || isspace((unsigned char)*s)) return -EINVAL;
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

static int s_set_str(char **dst, const char *v)
{
    char *c = strdup(v);
    if (!c) return -ENOMEM;
    free(*dst);
    *dst = c;
    return 0;
}

int titan_config_set(titan_config *cfg, const char *key, const char *value, char *err, size_t errcap)
{
    uint64_t u;
    if (!value) {
        snprintf(err, errcap, "--%s needs a value", key);
        return -EINVAL;
    }
    if (strcmp(key, "bind") == 0) {
        if (cfg->nbinds >= TITAN_MAX_BINDS) {
            snprintf(err, errcap, "at most %d --bind endpoints", TITAN_MAX_BINDS);
            return -EINVAL;
        }
        if (!strstr(value, "://")) {
            snprintf(err, errcap, "bad endpoint '%s': expected e.g. tcp://127.0.0.1:5555 or ipc:///run/titan.sock",
                     value);
            return -EINVAL;
        }
        cfg->binds[cfg->nbinds] = strdup(value);
        if (!cfg->binds[cfg->nbinds]) return -ENOMEM;
        cfg->nbinds++;
        return 0;
    }
    if (strcmp(key, "device") == 0) return s_set_str(&cfg->device, value);
    if (strcmp(key, "log-level") == 0) return s_set_str(&cfg->log_level, value);
    if (strcmp(key, "endpoint-file") == 0) return s_set_str(&cfg->endpoint_file, value);
    if (strcmp(key, "curve-secret") == 0) return s_set_str(&cfg->curve_secret, value);
    if (strcmp(key, "allow-keys") == 0) return s_set_str(&cfg->allow_keys, value);
    /* The URL itself is checked by the job consumer (titan_jobs_consumer_check). */
    if (strcmp(key, "redis") == 0) return s_set_str(&cfg->redis_url, value);
    if (strcmp(key, "redis-password") == 0) return s_set_str(&cfg->redis_password, value);
    if (strcmp(key, "redis-prefix") == 0 || strcmp(key, "jobs-group") == 0) {
        /* The prefix goes between braces (a Redis Cluster hash tag), the group into commands. */
        size_t n = strlen(value);
        bool ok = n >= 1 && n <= 64;
        for (size_t i = 0; ok && i < n; i++)
            ok = isgraph((unsigned char)value[i]) && value[i] != '{' && value[i] != '}';
        if (!ok) {
            snprintf(err, errcap, "--%s must be 1 to 64 printable characters without spaces, '{' or '}', not '%s'",
                     key, value);
            return -EINVAL;
        }
        return s_set_str(key[0] == 'r' ? &cfg->redis_prefix : &cfg->jobs_group, value);
    }
    if (strcmp(key, "models") == 0) return s_set_str(&cfg->models, value);
    if (strcmp(key, "http") == 0) {
        if (titan_http_parse_listen(value, NULL, err, errcap) != 0) return -EINVAL;
        return s_set_str(&cfg->http, value);
    }
    if (strcmp(key, "insecure") == 0) {
        if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "1") == 0)
            cfg->insecure = true;
        else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0 || strcmp(value, "0") == 0)
            cfg->insecure = false;
        else {
            snprintf(err, errcap, "insecure must be true or false, not '%s'", value);
            return -EINVAL;
        }
        return 0;
    }
    if (strcmp(key, "max-unread-mb") == 0) {
        if (s_parse_u64(value, 1, 1ULL << 20, &u)) {
            snprintf(err, errcap, "--max-unread-mb: '%s' is not a number in 1..1048576 (MiB)", value);
            return -EINVAL;
        }
        cfg->max_unread_mb = u;
        return 0;
    }
    struct {
        const char *name;
        uint64_t lo, hi;
    } nums[] = {
        {"threads", 1, 256},
        {"blas-threads", 1, 1024},
        {"queue", 0, 1000000},
        {"max-request-bytes", 1024, 1ULL << 40},
        {"max-result-bytes", 1024, 1ULL << 40},
        {"max-inflight-bytes", 1024, 1ULL << 42},
        {"max-queue", 0, 1000000},
        {"drain-timeout", 0, 3600000},
        {"heartbeat", 0, 2000000}, /* ZeroMQ caps the heartbeat TTL (3 intervals) at 6553500 ms */
        {"max-client-share", 1, 100},
        {"visibility-timeout", 100, 86400000},
        {"max-attempts", 1, 1000},
        {"result-ttl", 1, 315360000},
        {"jobs-inflight", 1, 256},
        {"max-models", 1, 256},
        {"model-memory-mb", 1, 1ULL << 24},
        {"tensor-memory-mb", 0, 1ULL << 30},
        {"tensor-quota-mb", 0, 1ULL << 30},
        {"max-tensors", 0, 1000000},
        {"tensor-ttl", 0, 315360000},
        {"pool-cache-mb", 0, 1ULL << 30},
        {"tensor-orphan-ttl", 0, 315360000},
        {"max-worker-tensors", 0, 16777216},
    };
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        if (strcmp(key, nums[i].name) != 0) continue;
        int rc = s_parse_u64(value, nums[i].lo, nums[i].hi, &u);
        if (rc) {
            snprintf(err, errcap, "--%s: '%s' is not a number in %llu..%llu%s", key, value,
                     (unsigned long long)nums[i].lo, (unsigned long long)nums[i].hi,
                     nums[i].hi > 1000000 ? " (K, M and G suffixes allowed)" : "");
            return -EINVAL;
        }
        if (i == 0) cfg->threads = (int)u;
        else if (i == 1) cfg->blas_threads = (int)u;
        else if (i == 2) cfg->queue = (int)u;
        else if (i == 3) cfg->max_request_bytes = u;
        else if (i == 4) cfg->max_result_bytes = u;
        else if (i == 5) cfg->max_inflight_bytes = u;
        else if (i == 6) cfg->queue = (int)u;
        else if (i == 7) cfg->drain_timeout_ms = (int)u;
        else if (i == 8) cfg->heartbeat_ms = (int)u;
        else if (i == 9) cfg->max_client_share = (int)u;
        else if (i == 10) cfg->visibility_timeout_ms = (int)u;
        else if (i == 11) cfg->max_attempts = (int)u;
        else if (i == 12) cfg->result_ttl_s = (int)u;
        else if (i == 13) cfg->jobs_inflight = (int)u;
        else if (i == 14) cfg->max_models = (int)u;
        else if (i == 15) cfg->model_memory_mb = u;
        else if (i == 16) cfg->tensor_memory_mb = u;
        else if (i == 17) cfg->tensor_quota_mb = u;
        else if (i == 18) cfg->max_tensors = (int)u;
        else if (i == 19) cfg->tensor_ttl_s = (int)u;
        else if (i == 20) cfg->pool_cache_mb = u;
        else if (i == 21) cfg->tensor_orphan_ttl_s = (int)u;
        else cfg->max_worker_tensors = (int)u;
        return 0;
    }
    snprintf(err, errcap, "unknown setting '%s'", key);
    return -ENOENT;
}

static char *s_trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
    return s;
}

int titan_config_load(titan_config *cfg, const char *path, char *err, size_t errcap)
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
        char sub[384];
        rc = titan_config_set(cfg, key, val, sub, sizeof(sub));
        if (rc) {
            snprintf(err, errcap, "%s:%d: %s", path, lineno, sub);
            rc = -EINVAL;
            break;
        }
    }
    fclose(f);
    return rc;
}
