/* metrics.c - the worker's counters, histograms and state, updated lock-free by the I/O and job
 * threads (relaxed C11 atomics: each value is exact, a scrape is not one instant) and rendered
 * in the Prometheus text format for the HTTP thread. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "metrics.h"
#include "titan/titan.h"

/* Fixed label values, so that no client can grow the series: anything else is "other". */
static const char *const s_ops[] = {
    "ping",         "gpu_info",   "ops",        "matrix_multiply", "inference",   "list_models", "load_model",
    "unload_model", "tensor_put", "tensor_get", "tensor_free",     "tensor_list", "embed",       "rerank",
    "other"};
#define NOPS (sizeof(s_ops) / sizeof(s_ops[0]))
static const char *const s_codes[] = {"ok",        "bad_request", "too_large",     "busy",
                                      "timeout",   "unsupported", "unauthorized",  "device_error",
                                      "internal",  "unknown_op",  "shutting_down", "quota_exceeded",
                                      "not_found", "other"};
#define NCODES (sizeof(s_codes) / sizeof(s_codes[0]))
static const char *const s_busy_reasons[TITAN_BUSY_COUNT] = {"queue_full", "client_share", "inflight_bytes",
                                                             "model_queue"};
/* Requests in one batch (dynamic batching), upper bounds. */
static const uint64_t s_batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096};
#define NBATCH (sizeof(s_batch_bounds) / sizeof(s_batch_bounds[0]))
/* Per-model queue depth gauges: the registry's models (256 at most), tracked by name. */
#define MODEL_GAUGES 256
static const char *const s_job_outcomes[TITAN_JOBS_OUTCOME_COUNT] = {"done", "failed", "retried",
                                                                     "dead_lettered", "skipped"};

/* Histogram upper bounds (inclusive), from 100 us to 60 s: a ping takes tens of microseconds,
 * a large product on the CPU tens of seconds. */
static const uint64_t s_bounds_ns[] = {
    100000ULL,     250000ULL,     500000ULL,     1000000ULL,     2500000ULL,     5000000ULL,
    10000000ULL,   25000000ULL,   50000000ULL,   100000000ULL,   250000000ULL,   500000000ULL,
    1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL, 30000000000ULL, 60000000000ULL};
static const char *const s_bounds_txt[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005",
                                           "0.01",   "0.025",   "0.05",   "0.1",   "0.25",   "0.5",
                                           "1",      "2.5",     "5",      "10",    "30",     "60"};
#define NBOUNDS (sizeof(s_bounds_ns) / sizeof(s_bounds_ns[0]))
_Static_assert(sizeof(s_bounds_txt) / sizeof(s_bounds_txt[0]) == NBOUNDS, "one text per bound");

typedef struct {
    atomic_uint_fast64_t bucket[NBOUNDS + 1]; /* per bucket, not cumulative; the last is +Inf */
    atomic_uint_fast64_t sum_ns;
} s_hist;

struct titan_metrics {
    atomic_uint_fast64_t requests[NOPS][NCODES];
    s_hist duration[NOPS];
    s_hist queue_wait;
    atomic_uint_fast64_t busy[TITAN_BUSY_COUNT];
    atomic_uint_fast64_t received_bytes, sent_bytes, dropped;
    atomic_uint_fast64_t jobs[TITAN_JOBS_OUTCOME_COUNT];
    atomic_int queue_depth, running;
    atomic_uint_fast64_t inflight_bytes;
    atomic_int state;
    atomic_int jobs_redis; /* -1: no consumer; 0: Redis unreachable; 1: connected */
    atomic_int executors, queue_capacity;
    _Atomic(titan_backend *) backend;
    _Atomic(titan_tstore *) tensors;
    atomic_uint_fast64_t batch_size[NBATCH + 1]; /* per bucket; the last is +Inf */
    atomic_uint_fast64_t batch_requests, batches, encoder_tokens;
    s_hist batch_wait;
    /* model_name[i] is written once, by the I/O thread, before model_named is raised past i. */
    char model_name[MODEL_GAUGES][129];
    atomic_int model_depth[MODEL_GAUGES];
    atomic_int model_named;
    int64_t t_start;   /* titan_clock_mono_ns at creation */
    double start_unix; /* CLOCK_REALTIME seconds at creation */
};

titan_metrics *titan_metrics_new(void)
{
    titan_metrics *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    /* calloc's zeros are valid atomics on every target we build for; say so once for the rest. */
    atomic_init(&m->state, TITAN_STATE_STARTING);
    atomic_init(&m->jobs_redis, -1);
    atomic_init(&m->backend, NULL);
    atomic_init(&m->tensors, NULL);
    m->t_start = titan_clock_mono_ns();
    m->start_unix = titan_clock_wall_s();
    return m;
}

void titan_metrics_destroy(titan_metrics **m)
{
    if (!m || !*m) return;
    free(*m);
    *m = NULL;
}

void titan_metrics_set_limits(titan_metrics *m, int executors, int queue_capacity)
{
    atomic_store_explicit(&m->executors, executors, memory_order_relaxed);
    atomic_store_explicit(&m->queue_capacity, queue_capacity, memory_order_relaxed);
}

void titan_metrics_set_tensors(titan_metrics *m, titan_tstore *ts)
{
    atomic_store_explicit(&m->tensors, ts, memory_order_release);
}

void titan_metrics_set_backend(titan_metrics *m, titan_backend *be)
{
    /* release: the HTTP thread that sees the pointer sees the backend whole */
    atomic_store_explicit(&m->backend, be, memory_order_release);
}

void titan_metrics_set_state(titan_metrics *m, titan_worker_state st)
{
    atomic_store_explicit(&m->state, (int)st, memory_order_relaxed);
}

void titan_metrics_set_jobs_redis_up(titan_metrics *m, bool up)
{
    if (m) atomic_store_explicit(&m->jobs_redis, up ? 1 : 0, memory_order_relaxed);
}

static void s_add(atomic_uint_fast64_t *c, uint64_t v)
{
    atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static uint64_t s_get(const atomic_uint_fast64_t *c)
{
    return atomic_load_explicit((atomic_uint_fast64_t *)c, memory_order_relaxed);
}

static size_t s_index(const char *const *names, size_t n, const char *name)
{
    if (name)
        for (size_t i = 0; i + 1 < n; i++)
            if (strcmp(names[i], name) == 0) return i;
    return n - 1; /* "other" */
}

static void s_observe(s_hist *h, uint64_t ns)
{
    size_t b = 0;
    while (b < NBOUNDS && ns > s_bounds_ns[b])
        b++;
    s_add(&h->bucket[b], 1);
    s_add(&h->sum_ns, ns);
}

void titan_metrics_received(titan_metrics *m, uint64_t bytes)
{
    s_add(&m->received_bytes, bytes);
}

void titan_metrics_replied(titan_metrics *m, const char *op, const char *code, uint64_t duration_ns,
                           uint64_t sent_bytes, bool delivered)
{
    size_t o = s_index(s_ops, NOPS, op);
    s_add(&m->requests[o][code ? s_index(s_codes, NCODES, code) : 0], 1);
    s_observe(&m->duration[o], duration_ns);
    if (delivered)
        s_add(&m->sent_bytes, sent_bytes);
    else
        s_add(&m->dropped, 1);
}

void titan_metrics_queued(titan_metrics *m, uint64_t wait_ns)
{
    s_observe(&m->queue_wait, wait_ns);
}

void titan_metrics_busy(titan_metrics *m, titan_busy_reason why)
{
    if ((unsigned)why < TITAN_BUSY_COUNT) s_add(&m->busy[why], 1);
}

void titan_metrics_set_load(titan_metrics *m, int queue_depth, int running, uint64_t inflight_bytes)
{
    atomic_store_explicit(&m->queue_depth, queue_depth, memory_order_relaxed);
    atomic_store_explicit(&m->running, running, memory_order_relaxed);
    atomic_store_explicit(&m->inflight_bytes, inflight_bytes, memory_order_relaxed);
}

void titan_metrics_batch(titan_metrics *m, size_t requests, uint64_t tokens)
{
    if (requests == 0) return;
    size_t b = 0;
    while (b < NBATCH && requests > s_batch_bounds[b]) b++;
    s_add(&m->batch_size[b], 1);
    s_add(&m->batches, 1);
    s_add(&m->batch_requests, requests);
    s_add(&m->encoder_tokens, tokens);
}

void titan_metrics_batch_queued(titan_metrics *m, uint64_t wait_ns)
{
    s_observe(&m->batch_wait, wait_ns);
}

void titan_metrics_set_model_queue(titan_metrics *m, const char *model, size_t waiting)
{
    int n = atomic_load_explicit(&m->model_named, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        if (strcmp(m->model_name[i], model) == 0) {
            atomic_store_explicit(&m->model_depth[i], (int)waiting, memory_order_relaxed);
            return;
        }
    }
    if (n >= MODEL_GAUGES || strlen(model) >= sizeof(m->model_name[0])) return;
    strcpy(m->model_name[n], model);
    atomic_store_explicit(&m->model_depth[n], (int)waiting, memory_order_relaxed);
    atomic_store_explicit(&m->model_named, n + 1, memory_order_release);
}

void titan_metrics_job(titan_metrics *m, titan_job_outcome outcome)
{
    if (m && (unsigned)outcome < TITAN_JOBS_OUTCOME_COUNT) s_add(&m->jobs[outcome], 1);
}

static double s_uptime(const titan_metrics *m)
{
    return titan_clock_ms_since(m->t_start) / 1e3;
}

bool titan_metrics_ready(const titan_metrics *m, char *why, size_t cap)
{
    int st = atomic_load_explicit((atomic_int *)&m->state, memory_order_relaxed);
    if (st == TITAN_STATE_STARTING) {
        snprintf(why, cap, "starting: the backend and the sockets are not up yet");
        return false;
    }
    if (st == TITAN_STATE_DRAINING) {
        snprintf(why, cap, "draining: the worker is shutting down and takes no new requests");
        return false;
    }
    /* A device whose context a sticky CUDA error poisoned computes nothing until a restart. */
    titan_backend *be = atomic_load_explicit((_Atomic(titan_backend *) *)&m->backend, memory_order_acquire);
    if (be && be->ready) {
        char dev[384];
        if (!be->ready(be, dev, sizeof(dev))) {
            snprintf(why, cap, "device: %s", dev);
            return false;
        }
    }
    /* A Redis outage stops only the batch jobs; compute requests are still served, so the worker
     * stays ready (docs/OPERATIONS.md, "HTTP health and metrics"). */
    if (atomic_load_explicit((atomic_int *)&m->jobs_redis, memory_order_relaxed) == 0)
        snprintf(why, cap, "jobs consumer: Redis unreachable, retrying (requests are still served)");
    else if (cap)
        why[0] = '\0';
    return true;
}

void titan_metrics_load(void *arg, titan_worker_load *out)
{
    titan_metrics *m = arg;
    int q = atomic_load_explicit(&m->queue_depth, memory_order_relaxed);
    out->queue_depth = q;
    out->inflight = q + atomic_load_explicit(&m->running, memory_order_relaxed);
    out->uptime_s = s_uptime(m);
}

/* Writes s as a label value: backslash, double quote and newline escaped. */
static void s_label(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '\\')
            fputs("\\\\", f);
        else if (*s == '"')
            fputs("\\\"", f);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

/* One sample line: the value round-trips (the shortest text that reads back as it), and NaN and the
 * infinities are written as Prometheus's NaN, +Inf and -Inf. */
static void s_sample(FILE *f, const char *series, double v)
{
    char num[40];
    if (isnan(v))
        strcpy(num, "NaN");
    else if (isinf(v))
        strcpy(num, v > 0 ? "+Inf" : "-Inf");
    else
        titan_format_float64(v, num, sizeof(num));
    fprintf(f, "%s %s\n", series, num);
}

static void s_family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One histogram's series; label is `op="x",` or "" (then no braces around _sum and _count). */
static void s_hist_render(FILE *f, const char *name, const s_hist *h, const char *op)
{
    uint64_t cum = 0;
    char lbl[64] = "";
    if (op) snprintf(lbl, sizeof(lbl), "op=\"%s\",", op);
    for (size_t b = 0; b <= NBOUNDS; b++) {
        cum += s_get(&h->bucket[b]);
        fprintf(f, "%s_bucket{%sle=\"%s\"} %llu\n", name, lbl, b < NBOUNDS ? s_bounds_txt[b] : "+Inf",
                (unsigned long long)cum);
    }
    /* _count is the +Inf bucket itself, so the two agree even while requests are recorded. */
    double sum = (double)s_get(&h->sum_ns) / 1e9;
    if (op) {
        fprintf(f, "%s_sum{op=\"%s\"} %.9f\n%s_count{op=\"%s\"} %llu\n", name, op, sum, name, op,
                (unsigned long long)cum);
    } else {
        fprintf(f, "%s_sum %.9f\n%s_count %llu\n", name, sum, name, (unsigned long long)cum);
    }
}

int titan_metrics_render(titan_metrics *m, char **text, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return -ENOMEM;
    titan_backend *be = atomic_load_explicit(&m->backend, memory_order_acquire);
    char why[160];
    bool ready = titan_metrics_ready(m, why, sizeof(why));

    s_family(f, "titan_up", "gauge", "1 while the worker process serves HTTP.");
    fputs("titan_up 1\n", f);
    s_family(f, "titan_build_info", "gauge", "Always 1; the labels name the version, backend and device.");
    fprintf(f, "titan_build_info{version=\"%s\",backend=\"", TITAN_VERSION);
    s_label(f, be ? be->info.backend : "");
    fputs("\",device=\"", f);
    s_label(f, be ? be->info.name : "");
    fputs("\"} 1\n", f);
    s_family(f, "titan_ready", "gauge",
             "1 when the worker takes new requests (as /readyz answers 200), else 0.");
    fprintf(f, "titan_ready %d\n", ready ? 1 : 0);
    s_family(f, "titan_start_time_seconds", "gauge",
             "When the worker started, in seconds since the Unix epoch.");
    fprintf(f, "titan_start_time_seconds %.3f\n", m->start_unix);
    s_family(f, "titan_executors", "gauge", "Executor threads (--threads): requests computed at once.");
    fprintf(f, "titan_executors %d\n", atomic_load_explicit(&m->executors, memory_order_relaxed));
    s_family(f, "titan_queue_capacity", "gauge",
             "Requests that may wait for an executor before \"busy\" (--queue).");
    fprintf(f, "titan_queue_capacity %d\n", atomic_load_explicit(&m->queue_capacity, memory_order_relaxed));

    s_family(f, "titan_requests_total", "counter",
             "Requests answered, by operation and outcome (code=\"ok\" or the error code).");
    for (size_t o = 0; o < NOPS; o++) {
        for (size_t c = 0; c < NCODES; c++) {
            uint64_t v = s_get(&m->requests[o][c]);
            /* ok always, so that every op has a series from the start; errors once they happen */
            if (c == 0 || v)
                fprintf(f, "titan_requests_total{op=\"%s\",code=\"%s\"} %llu\n", s_ops[o], s_codes[c],
                        (unsigned long long)v);
        }
    }
    s_family(f, "titan_request_duration_seconds", "histogram",
             "Time from receiving a request to sending its reply, by operation.");
    for (size_t o = 0; o < NOPS; o++)
        s_hist_render(f, "titan_request_duration_seconds", &m->duration[o], s_ops[o]);
    s_family(f, "titan_queue_duration_seconds", "histogram",
             "Time a request waited for an executor, for each request handed to one.");
    s_hist_render(f, "titan_queue_duration_seconds", &m->queue_wait, NULL);

    int q = atomic_load_explicit(&m->queue_depth, memory_order_relaxed);
    int r = atomic_load_explicit(&m->running, memory_order_relaxed);
    s_family(f, "titan_queue_depth", "gauge", "Requests waiting for an executor.");
    fprintf(f, "titan_queue_depth %d\n", q);
    s_family(f, "titan_requests_inflight", "gauge", "Requests running on an executor or waiting for one.");
    fprintf(f, "titan_requests_inflight %d\n", q + r);
    s_family(f, "titan_inflight_bytes", "gauge",
             "Request bytes held by running and waiting requests (limit: --max-inflight-bytes).");
    fprintf(f, "titan_inflight_bytes %llu\n",
            (unsigned long long)atomic_load_explicit(&m->inflight_bytes, memory_order_relaxed));
    s_family(f, "titan_busy_rejections_total", "counter",
             "Requests answered \"busy\" at admission, by the limit they met.");
    for (int b = 0; b < TITAN_BUSY_COUNT; b++)
        fprintf(f, "titan_busy_rejections_total{reason=\"%s\"} %llu\n", s_busy_reasons[b],
                (unsigned long long)s_get(&m->busy[b]));
    s_family(f, "titan_received_bytes_total", "counter",
             "Bytes of request messages received (every frame after the routing envelope).");
    fprintf(f, "titan_received_bytes_total %llu\n", (unsigned long long)s_get(&m->received_bytes));
    s_family(f, "titan_sent_bytes_total", "counter",
             "Bytes of replies handed to ZeroMQ (the header and data frames, without the envelope).");
    fprintf(f, "titan_sent_bytes_total %llu\n", (unsigned long long)s_get(&m->sent_bytes));
    s_family(f, "titan_replies_dropped_total", "counter",
             "Replies that could not be sent: the client had gone or did not read its replies.");
    fprintf(f, "titan_replies_dropped_total %llu\n", (unsigned long long)s_get(&m->dropped));

    s_family(f, "titan_batch_size", "histogram",
             "Requests merged into one batch for an encoder model (embed, rerank: dynamic batching).");
    uint64_t cum = 0;
    for (size_t b = 0; b <= NBATCH; b++) {
        cum += s_get(&m->batch_size[b]);
        if (b < NBATCH) fprintf(f, "titan_batch_size_bucket{le=\"%llu\"} %llu\n", (unsigned long long)s_batch_bounds[b],
                                (unsigned long long)cum);
        else fprintf(f, "titan_batch_size_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    fprintf(f, "titan_batch_size_sum %llu\ntitan_batch_size_count %llu\n",
            (unsigned long long)s_get(&m->batch_requests), (unsigned long long)cum);
    s_family(f, "titan_batch_queue_duration_seconds", "histogram",
             "Time an embed or rerank request waited in its model's queue before its batch started.");
    s_hist_render(f, "titan_batch_queue_duration_seconds", &m->batch_wait, NULL);
    s_family(f, "titan_encoder_tokens_total", "counter", "Tokens run through encoder models (embed, rerank).");
    fprintf(f, "titan_encoder_tokens_total %llu\n", (unsigned long long)s_get(&m->encoder_tokens));
    int named = atomic_load_explicit(&m->model_named, memory_order_acquire);
    s_family(f, "titan_model_queue_depth", "gauge", "Requests waiting in a model's batching queue, by model.");
    for (int i = 0; i < named; i++) {
        fputs("titan_model_queue_depth{model=\"", f);
        s_label(f, m->model_name[i]);
        fprintf(f, "\"} %d\n", atomic_load_explicit(&m->model_depth[i], memory_order_relaxed));
    }

    int jobs = atomic_load_explicit(&m->jobs_redis, memory_order_relaxed);
    if (jobs >= 0) {
        s_family(f, "titan_jobs_processed_total", "counter",
                 "Batch jobs from Redis Streams handled by this worker, by outcome.");
        for (int o = 0; o < TITAN_JOBS_OUTCOME_COUNT; o++)
            fprintf(f, "titan_jobs_processed_total{outcome=\"%s\"} %llu\n", s_job_outcomes[o],
                    (unsigned long long)s_get(&m->jobs[o]));
        s_family(f, "titan_jobs_redis_up", "gauge",
                 "1 while the job consumer is connected to Redis, else 0.");
        fprintf(f, "titan_jobs_redis_up %d\n", jobs);
    }

    if (be && be->stats) {
        titan_device_stats st;
        memset(&st, 0, sizeof(st));
        be->stats(be, &st);
        if (st.has_memory) {
            s_family(f, "titan_device_memory_total_bytes", "gauge",
                     "Device memory (host RAM, MemTotal, on the CPU backend).");
            fprintf(f, "titan_device_memory_total_bytes %llu\n", (unsigned long long)st.memory_total_bytes);
            s_family(f, "titan_device_memory_used_bytes", "gauge",
                     "Device memory in use (MemTotal - MemAvailable on the CPU backend).");
            fprintf(f, "titan_device_memory_used_bytes %llu\n", (unsigned long long)st.memory_used_bytes);
        }
        /* Prometheus's text format has its own tokens for the values JSON lacks: NaN, +Inf, -Inf. */
        if (st.has_utilization) {
            s_family(f, "titan_device_utilization_ratio", "gauge",
                     "Busy share of the device's time, 0 to 1, over the last sampling window.");
            s_sample(f, "titan_device_utilization_ratio", st.utilization);
        }
        if (st.has_temperature) {
            s_family(f, "titan_device_temperature_celsius", "gauge", "Device temperature.");
            s_sample(f, "titan_device_temperature_celsius", st.temperature_c);
        }
        if (st.has_power) {
            s_family(f, "titan_device_power_watts", "gauge", "The GPU's power draw (NVML).");
            s_sample(f, "titan_device_power_watts", st.power_w);
        }
        if (st.has_clocks) {
            s_family(f, "titan_device_clock_mhz", "gauge", "The GPU's current clocks (NVML), by domain.");
            s_sample(f, "titan_device_clock_mhz{domain=\"sm\"}", st.sm_clock_mhz);
            s_sample(f, "titan_device_clock_mhz{domain=\"memory\"}", st.mem_clock_mhz);
        }
        if (st.has_pool) {
            s_family(f, "titan_device_pool_bytes", "gauge",
                     "Device memory the CUDA backend's pool holds, by state (in use, or cached for reuse).");
            fprintf(f, "titan_device_pool_bytes{state=\"in_use\"} %llu\n",
                    (unsigned long long)(st.pool_held_bytes - st.pool_cached_bytes));
            fprintf(f, "titan_device_pool_bytes{state=\"cached\"} %llu\n", (unsigned long long)st.pool_cached_bytes);
            s_family(f, "titan_device_allocations_total", "counter",
                     "cudaMalloc calls of the pool; flat in steady state.");
            fprintf(f, "titan_device_allocations_total %llu\n", (unsigned long long)st.pool_device_allocs);
        }
    }
    titan_tstore *ts = atomic_load_explicit(&m->tensors, memory_order_acquire);
    if (ts) {
        uint64_t bytes, count, clients, expired;
        titan_tstore_usage(ts, &bytes, &count, &clients, &expired);
        s_family(f, "titan_resident_bytes", "gauge", "Bytes of resident tensors (tensor_put, keep), all clients.");
        fprintf(f, "titan_resident_bytes %llu\n", (unsigned long long)bytes);
        s_family(f, "titan_resident_limit_bytes", "gauge", "--tensor-memory-mb, in bytes.");
        fprintf(f, "titan_resident_limit_bytes %llu\n", (unsigned long long)titan_tstore_get_quota(ts)->worker_bytes);
        s_family(f, "titan_resident_tensors", "gauge", "Resident tensors held.");
        fprintf(f, "titan_resident_tensors %llu\n", (unsigned long long)count);
        s_family(f, "titan_resident_clients", "gauge", "Clients holding resident tensors.");
        fprintf(f, "titan_resident_clients %llu\n", (unsigned long long)clients);
        s_family(f, "titan_resident_expired_total", "counter", "Resident tensors freed by --tensor-ttl.");
        fprintf(f, "titan_resident_expired_total %llu\n", (unsigned long long)expired);
    }
    if (fclose(f) != 0 || !buf) {
        free(buf);
        return -ENOMEM;
    }
    *text = buf;
    *len = n;
    return 0;
}
