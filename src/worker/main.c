/* main.c - titan-worker: settings, then compute, then services, serving, and one way out. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "hostpool.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "metrics.h"
#include "module.h"
#include "backends/select.h"
#include "notify.h"
#include "ops.h"
#include "server.h"
#include "settings.h"
#include "sysinfo.h"
#include "titan/titan.h"

static volatile sig_atomic_t s_stop;
/* Signals may land on any thread (BLAS libraries start theirs before main), so the handler
 * also writes to this pipe, which the I/O loop polls. */
static int s_wake[2] = {-1, -1};

static void s_on_signal(int sig)
{
    (void)sig;
    /* A second signal means "now": skip the wait for running work. */
    if (s_stop) _exit(1);
    int saved = errno;
    s_stop = 1;
    if (s_wake[1] >= 0) {
        ssize_t w = write(s_wake[1], "x", 1);
        (void)w;
    }
    errno = saved;
}

#ifdef TITAN_HAVE_TORCH
#define S_NRUNNERS 1
#else
#define S_NRUNNERS 0
#endif

/* How to get a worker that serves models, for the start-up errors. */
#define S_RUNNER_HOWTO                                                                                             \
    "titan-worker serves TorchScript models only when built with the TorchScript runner: install libtorch-dev, "  \
    "then meson setup -Dtorch=enabled (docs/OPERATIONS.md, \"Models\")"

/* Opens the TorchScript runner module: $TITAN_TORCH_RUNNER when set (a path; for tests and odd
 * layouts), else titan-runner-torchscript.so where module.c looks for it. Returns the runner, or NULL
 * with a message in err. libtorch does not unload cleanly: it stays loaded. */
static const titan_runner *s_open_runner(char *err, size_t errcap)
{
    const char *over = getenv("TITAN_TORCH_RUNNER");
    char msg[700];
    void *h;
    if (over && *over) {
        h = dlopen(over, RTLD_NOW | RTLD_LOCAL);
        if (!h) snprintf(msg, sizeof(msg), "cannot load TITAN_TORCH_RUNNER=%.300s: %.300s", over, dlerror());
    } else {
        h = titan_module_open("titan-runner-torchscript.so", msg, sizeof(msg));
    }
    if (!h) {
        snprintf(err, errcap, "--models: no TorchScript runner: %.450s", msg);
        return NULL;
    }
    const titan_runner *r = dlsym(h, "titan_runner_torchscript");
    if (!r)
        snprintf(err, errcap, "--models: %.300s is not the TorchScript runner (no titan_runner_torchscript)",
                 over && *over ? over : "titan-runner-torchscript.so");
    return r;
}

static void s_note_model(const char *msg)
{
    titan_log(TITAN_LOG_INFO, "%s", msg);
}

static int s_write_endpoint_file(const char *path, const char *endpoints)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return -errno;
    fputs(endpoints, f);
    if (fclose(f) != 0) return -errno;
    /* rename makes the file appear whole: readers never see a partial list */
    if (rename(tmp, path) != 0) return -errno;
    return 0;
}

/* Everything the worker holds, so that shutting down can take apart whatever start-up built. */
typedef struct {
    int status; /* the exit status: 0, 1 (could not start, or a fatal error), 2 (usage error) */
    titan_config cfg;
    titan_metrics *metrics;
    titan_http *http;
    titan_worker_ctx w;
    bool ops_ready;
    const titan_runner *runners[1];
    char runner_info[128];
    titan_server *srv;
    titan_jobs_consumer *jobs;
    char eps[2048]; /* the bound endpoints on one line, for the logs */
    bool abandoned; /* requests still ran at the drain timeout: see main() */
} s_worker;

/* Logs a start-up failure (exit status 1). Returns false, for the step to return. */
static bool s_fail(s_worker *app, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool s_fail(s_worker *app, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    titan_log(TITAN_LOG_ERROR, "%s", msg);
    app->status = 1;
    return false;
}

/* Only the main thread takes SIGINT and SIGTERM: threads are created with them blocked. */
static void s_block_signals(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

static void s_restore_signals(const sigset_t *old)
{
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

/* Step 1: the settings table over the defaults, --config FILE and the command line; then what they
 * mean on this machine (executors, BLAS threads). False when the worker is not to run: --help and
 * --version (status 0), or a usage error (status 2). */
static bool s_read_settings(s_worker *app, int argc, char **argv)
{
    char err[512] = "";
    titan_settings_action action = TITAN_SETTINGS_RUN;
    int rc = titan_settings_init(&app->cfg);
    if (rc == 0) rc = titan_settings_parse_args(&app->cfg, argc, argv, &action, err, sizeof(err));
    if (rc == 0 && action == TITAN_SETTINGS_HELP) {
        titan_settings_print_help(stdout);
        return false;
    }
    if (rc == 0 && action == TITAN_SETTINGS_VERSION) {
        printf("titan-worker %s (protocol %d; model runners: %s)\n", TITAN_VERSION, TITAN_PROTOCOL_VERSION,
               S_NRUNNERS ? "torchscript" : "none");
        return false;
    }
    if (rc == 0) rc = titan_jobs_consumer_check(&app->cfg, err, sizeof(err));
    if (rc == -ENOMEM) {
        fprintf(stderr, "titan-worker: out of memory\n");
        app->status = 1;
        return false;
    }
    if (rc) {
        if (err[0]) fprintf(stderr, "titan-worker: %s\n", err);
        fprintf(stderr, "Try 'titan-worker --help'.\n");
        app->status = 2;
        return false;
    }
    titan_log_set_level_name(app->cfg.log_level); /* one of the names the table accepts */
    titan_sysinfo si;
    titan_sysinfo_read(&si);
    titan_worker_ctx *w = &app->w;
    w->threads = app->cfg.threads > 0 ? app->cfg.threads : si.cores;
    w->blas_threads = app->cfg.blas_threads > 0 ? app->cfg.blas_threads : si.cores;
    w->queue = app->cfg.queue;
    w->limits.max_request_bytes = app->cfg.max_request_bytes;
    w->limits.max_result_bytes = app->cfg.max_result_bytes;
    w->limits.max_inflight_bytes = app->cfg.max_inflight_bytes;
    return true;
}

/* Step 2: the metrics, and with --http the health endpoint, first of all, so that probes see
 * "starting" (/readyz 503) while the device opens. */
static bool s_start_health(s_worker *app)
{
    app->metrics = titan_metrics_new();
    if (!app->metrics) return s_fail(app, "out of memory");
    titan_metrics_set_limits(app->metrics, app->w.threads, app->w.queue);
    app->w.load = titan_metrics_load;
    app->w.load_arg = app->metrics;
    if (!app->cfg.http) return true;
    char err[512];
    sigset_t old;
    titan_http_opts hopts = {.max_body_bytes = (uint64_t)app->cfg.http_max_body_kb << 10,
                             .max_inflight = app->cfg.http_max_inflight,
                             .token_file = app->cfg.http_token,
                             .insecure = app->cfg.insecure_http};
    s_block_signals(&old);
    app->http = titan_http_start(app->cfg.http, &hopts, app->metrics, err, sizeof(err));
    s_restore_signals(&old);
    if (!app->http) return s_fail(app, "%s", err);
    if (titan_http_public(app->http))
        titan_log(TITAN_LOG_WARN,
                  "HTTP on %s is reachable beyond loopback, without authentication: /metrics is "
                  "read-only but tells the load, the device and the version; firewall it to your "
                  "Prometheus. The /v1 API %s",
                  titan_http_url(app->http),
                  app->cfg.http_token      ? "needs a bearer token (--http-token)"
                  : app->cfg.insecure_http ? "is open to every client that reaches it (--insecure-http)"
                                           : "answers loopback clients only (403 to others: use --http-token)");
    else if (app->cfg.insecure_http && !app->cfg.http_token)
        titan_log(TITAN_LOG_INFO, "--insecure-http: HTTP listens on loopback only, where /v1 is open anyway");
    return true;
}

/* The models of --models: encoders (model directories, served by the core itself) and TorchScript models (on the
 * runner module, opened only when a manifest names it: libtorch takes ~0.7 s to load). A manifest no runner of
 * this worker serves stops the start (exit status 1), as a --device it cannot use does. */
static bool s_open_models(s_worker *app)
{
    const titan_config *cfg = &app->cfg;
    snprintf(app->runner_info, sizeof(app->runner_info), "bert (built in)");
    app->w.runner_info = app->runner_info;
    if (!cfg->models) return true;
    char err[512];
    size_t nrunners = 0;
    int torch = titan_models_dir_names_runner(cfg->models, "torchscript");
    if (torch > 0 && !S_NRUNNERS)
        return s_fail(app, "--models %s: a manifest names the TorchScript runner, but this titan-worker was built "
                      "without a model runner; %s", cfg->models, S_RUNNER_HOWTO);
    if (torch > 0) {
        app->runners[0] = s_open_runner(err, sizeof(err));
        if (!app->runners[0]) return s_fail(app, "%s; %s", err, S_RUNNER_HOWTO);
        char desc[96];
        app->runners[0]->describe(desc, sizeof(desc));
        snprintf(app->runner_info, sizeof(app->runner_info), "bert (built in), %s", desc);
        nrunners = 1;
    }
    app->w.models = titan_models_new(cfg->models, app->runners, nrunners, cfg->max_models,
                                     cfg->model_memory_mb << 20, s_note_model, err, sizeof(err));
    if (!app->w.models) return s_fail(app, "%s", err);
    titan_models_set_backend(app->w.models, app->w.backend); /* encoders run on it when it has their forward pass */
    json_t *l = titan_models_list(app->w.models);
    titan_log(TITAN_LOG_INFO, "serving %zu model(s) from %s (%s; at most %d loaded, %llu MB)", json_array_size(l),
              cfg->models, app->runner_info, cfg->max_models, (unsigned long long)cfg->model_memory_mb);
    json_decref(l);
    return true;
}

/* Host memory for tensors (--host-pool-mb). Results and the CPU backend's tensors come from the host buffer
 * pool (hostpool.h). The operands of binary requests are ZeroMQ's own receive buffers, from malloc: with
 * glibc's defaults, a fresh worker maps each anew (and faults in its pages) for its first dozen products of
 * a size, until glibc's dynamic thresholds settle. The worker owns its process's allocator, so it sets them
 * from the start: buffers up to S_HEAP_MAX come from the heap, and up to the pool's cap of free heap is kept
 * rather than given back. S_HEAP_MAX is the most glibc's dynamic threshold reaches by itself (32 MiB on 64-bit):
 * setting a threshold turns the dynamic one off, and with 8 MiB here every float32 n=2048 operand (16 MiB) was
 * mapped and faulted in anew, each product 2.3x slower than with glibc's defaults (make bench, 2026-12-07).
 * Larger ones stay mmap'ed. JSON operands are allocated once at their size (jsonscan.c counts the elements
 * first), so no trail of outgrown copies stays in the heap (test_tensors' header memory). --host-pool-mb 0
 * leaves glibc's defaults. The library (libtitan) sets only the pool, never the host program's allocator. */
#define S_HEAP_MAX (32ULL << 20)
static void s_host_memory(uint64_t cap)
{
    titan_hostpool_set_cap(cap);
    if (!cap) return;
    uint64_t mmap_at = cap < S_HEAP_MAX ? cap : S_HEAP_MAX;
    uint64_t trim_at = cap < (uint64_t)INT_MAX ? cap : (uint64_t)INT_MAX;
    if (!mallopt(M_MMAP_THRESHOLD, (int)mmap_at) || !mallopt(M_TRIM_THRESHOLD, (int)trim_at))
        titan_log(TITAN_LOG_DEBUG, "mallopt refused the host memory thresholds; glibc's defaults stay");
}

/* Step 3: compute: the backend for --device, resident tensors, the ops, the models. */
static bool s_open_compute(s_worker *app)
{
    const titan_config *cfg = &app->cfg;
    titan_worker_ctx *w = &app->w;
    char why[512] = "", err[512];
    titan_cuda_opts copts = {.pool_cache_bytes = cfg->pool_cache_mb << 20, .executors = w->threads};
    bool why_warns = false;
    s_host_memory(cfg->host_pool_mb << 20);
    int rc = titan_backend_select(cfg->device, w->blas_threads, &copts, &w->backend, why, sizeof(why), &why_warns,
                                  err, sizeof(err));
    if (rc == -EINVAL) return s_fail(app, "%s", err);
    if (rc) return s_fail(app, "%s; use --device cpu (or auto)", err);
    /* Routine (no GPU at all) at debug, so that a CPU worker still starts with one line at info. */
    if (why[0]) titan_log(why_warns ? TITAN_LOG_WARN : TITAN_LOG_DEBUG, "--device %s: %s", cfg->device, why);

    /* What the backend sets aside for itself (cuBLAS's workspaces) is not the tensors' to take. */
    uint64_t dev_bytes = (uint64_t)(w->backend->info.total_memory_gb * 1e9);
    dev_bytes = dev_bytes > w->backend->info.reserved_bytes ? dev_bytes - w->backend->info.reserved_bytes : 0;
    bool cpu = strcmp(w->backend->info.backend, "cpu") == 0;
    titan_tstore_quota q = {
        .worker_bytes = cfg->tensor_memory_mb ? cfg->tensor_memory_mb << 20 : cpu ? dev_bytes / 4 : dev_bytes / 2,
        .client_tensors = cfg->max_tensors,
        .idle_ttl_s = cfg->tensor_ttl_s,
        .worker_tensors = (uint64_t)cfg->max_worker_tensors,
        .orphan_ttl_s = cfg->tensor_orphan_ttl_s,
    };
    q.client_bytes = cfg->tensor_quota_mb ? cfg->tensor_quota_mb << 20 : q.worker_bytes;
    if (q.client_bytes > q.worker_bytes) q.client_bytes = q.worker_bytes;
    w->tensors = titan_tstore_new(w->backend, &q);
    if (!w->tensors) return s_fail(app, "cannot set up resident tensors: out of memory");
    rc = titan_tstore_start_sweeper(w->tensors);
    if (rc) return s_fail(app, "cannot set up resident tensors: %s", strerror(-rc));
    titan_metrics_set_tensors(app->metrics, w->tensors);
    titan_metrics_set_backend(app->metrics, w->backend);

    if (titan_ops_init(w)) return s_fail(app, "out of memory");
    app->ops_ready = true;
    return s_open_models(app);
}

/* Step 4: the ZeroMQ server and its executors, the signal handlers, the job consumer, and last the
 * endpoint file, so that whoever waits for it finds the worker whole. */
static bool s_start_services(s_worker *app)
{
    const titan_config *cfg = &app->cfg;
    char err[512];
    sigset_t old;
    s_block_signals(&old);
    app->srv = titan_server_new(cfg, &app->w, app->metrics, err, sizeof(err));
    /* The /v1 API goes through the server like any client, over its inproc endpoint. */
    bool api_ok = !app->srv || !app->http || titan_http_attach(app->http, titan_server_zmq_ctx(app->srv), err,
                                                              sizeof(err)) == 0;
    s_restore_signals(&old);
    if (!app->srv || !api_ok) return s_fail(app, "%s", err);

    if (pipe2(s_wake, O_NONBLOCK | O_CLOEXEC) != 0) s_wake[0] = s_wake[1] = -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    const titan_worker_ctx *w = &app->w;
    const titan_tstore_quota *q = titan_tstore_get_quota(w->tensors);
    snprintf(app->eps, sizeof(app->eps), "%s", titan_server_endpoints(app->srv));
    for (char *p = app->eps; (p = strchr(p, '\n')) && p[1]; p++) *p = ' ';
    app->eps[strcspn(app->eps, "\n")] = '\0';
    titan_log(TITAN_LOG_INFO,
              "titan-worker %s listening on %s (device %s: %s; %d executors, %d BLAS threads, queue %d, "
              "max request %llu bytes; resident tensors %llu MB, %llu MB and %d tensors per client%s)",
              TITAN_VERSION, app->eps, w->backend->info.backend, w->backend->info.name, w->threads, w->blas_threads,
              w->queue, (unsigned long long)w->limits.max_request_bytes, (unsigned long long)(q->worker_bytes >> 20),
              (unsigned long long)(q->client_bytes >> 20), q->client_tensors,
              cfg->tensor_ttl_s ? ", idle ones freed at --tensor-ttl" : "");
    if (app->http)
        titan_log(TITAN_LOG_INFO,
                  "HTTP /healthz, /readyz and /metrics on %s; /v1/embeddings, /v1/rerank and /v1/models %s",
                  titan_http_url(app->http),
                  app->cfg.http_token      ? "with bearer tokens (--http-token)"
                  : app->cfg.insecure_http ? "open to any client (--insecure-http)"
                                           : "for loopback clients");

    /* Jobs go through the same admission as ZeroMQ requests, so the consumer starts once the
     * server is up. On SIGTERM it starts no new job, the server drains the one in hand (a job
     * still queued gets "shutting_down": its start is undone and its entry stays pending in Redis
     * for another worker), and the consumer is stopped once the server has drained. */
    if (cfg->redis_url) {
        app->jobs = titan_jobs_consumer_start(cfg, titan_server_zmq_ctx(app->srv), app->metrics, err, sizeof(err));
        if (!app->jobs) return s_fail(app, "%s", err);
        titan_jobs_consumer_watch(app->jobs, &s_stop);
    }
    /* The ZeroMQ endpoints come first, one per line, then the HTTP address, if any. */
    if (cfg->endpoint_file) {
        char file[2200];
        snprintf(file, sizeof(file), "%s%s%s", titan_server_endpoints(app->srv),
                 app->http ? titan_http_url(app->http) : "", app->http ? "\n" : "");
        int rc = s_write_endpoint_file(cfg->endpoint_file, file);
        if (rc) return s_fail(app, "cannot write %s: %s", cfg->endpoint_file, strerror(-rc));
    }
    return true;
}

/* Step 5: ready (systemd, /readyz), then serve until SIGINT/SIGTERM and the drain. */
static void s_run(s_worker *app)
{
    char status[2300];
    snprintf(status, sizeof(status), "serving on %s (%s)", app->eps, app->w.backend->info.backend);
    /* A signal that came first has its drain under way: stay "draining" then. */
    if (!s_stop) titan_metrics_set_state(app->metrics, TITAN_STATE_SERVING);
    titan_notify_ready(status);
    if (titan_server_run(app->srv, &s_stop, s_wake[0]) != 0) app->status = 1;
}

/* Step 6: takes apart whatever the steps before built, the newest first; from any step, after any
 * failure. One exception to the order: the HTTP thread reads the backend and the tensors through the
 * metrics, so it stops before compute is taken apart. */
static void s_shut_down(s_worker *app)
{
    /* The consumer started no job since the signal, and the server has drained the ones in hand. */
    titan_jobs_consumer_stop(&app->jobs);
    /* The /v1 requests still in hand are answered 503, and the bridge's socket closes before the server's context
     * ends; /healthz, /readyz and /metrics go on until titan_http_stop. */
    titan_http_detach(app->http);
    if (app->srv) {
        unsigned long long served, errors, dropped, refused;
        titan_server_counts(app->srv, &served, &errors, &dropped, &refused);
        char refused_txt[64] = "";
        if (refused) snprintf(refused_txt, sizeof(refused_txt), ", %llu clients refused", refused);
        int abandoned = titan_server_abandoned(app->srv);
        if (abandoned > 0) {
            /* A product is still computing on an executor: nothing it uses may be freed. */
            titan_log(TITAN_LOG_INFO,
                      "titan-worker stopped after %llu request%s (%llu answered with errors, %llu replies "
                      "undeliverable%s, %d abandoned at the drain timeout)",
                      served, served == 1 ? "" : "s", errors, dropped, refused_txt, abandoned);
            app->abandoned = true;
            return;
        }
        titan_server_destroy(&app->srv);
        titan_log(TITAN_LOG_INFO,
                  "titan-worker stopped after %llu request%s (%llu answered with errors, %llu replies "
                  "undeliverable%s)",
                  served, served == 1 ? "" : "s", errors, dropped, refused_txt);
    }
    titan_http_stop(&app->http);
    if (app->metrics) {
        titan_metrics_set_backend(app->metrics, NULL);
        titan_metrics_set_tensors(app->metrics, NULL);
    }
    titan_models_destroy(&app->w.models);
    if (app->ops_ready) titan_ops_fini(&app->w);
    titan_tstore_destroy(&app->w.tensors);
    titan_backend_destroy(&app->w.backend);
    titan_metrics_destroy(&app->metrics);
    titan_settings_free(&app->cfg);
}

int main(int argc, char **argv)
{
    s_worker app = {.status = 0};
    if (s_read_settings(&app, argc, argv) && s_start_health(&app) && s_open_compute(&app) && s_start_services(&app))
        s_run(&app);
    s_shut_down(&app);
    if (app.abandoned) {
        /* Leave without exit(): it would wait for the executors' threads (BLAS joins them at exit),
         * which outlasts the drain timeout. */
        fflush(stderr);
        _exit(app.status);
    }
    return app.status;
}
