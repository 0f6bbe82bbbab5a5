/* main.c - titan-worker: options, start-up, signals and shutdown. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "config.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "metrics.h"
#include "module.h"
#include "backends/select.h"
#include "notify.h"
#include "ops.h"
#include "server.h"
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

static void s_usage(FILE *f)
{
    fprintf(f,
            "Usage: titan-worker [OPTIONS]\n"
            "Serves GPU (or CPU) compute over ZeroMQ: ping, gpu_info, ops, matrix_multiply.\n"
            "\n"
            "Options:\n"
            "  --bind ENDPOINT          listen here; repeatable (default tcp://127.0.0.1:5555;\n"
            "                           tcp://127.0.0.1:* picks a free port)\n"
            "  --device DEV             auto | cpu | cuda | cuda:N (default auto: the best available)\n"
            "  --threads N              executor threads serving requests at once (default: one per core)\n"
            "  --blas-threads N         BLAS threads for each product (default: all cores)\n"
            "  --queue N, --max-queue N requests that may wait for an executor before the worker\n"
            "                           answers \"busy\" (default 64)\n"
            "  --max-client-share PCT   the part of the queue one client may fill (default 50), so a\n"
            "                           flooding client cannot starve the others\n"
            "  --max-request-bytes N    largest request accepted, K/M/G suffixes (default 1G)\n"
            "  --max-result-bytes N     largest result computed (default 1G)\n"
            "  --max-inflight-bytes N   request bytes held at once, queued and running, before the\n"
            "                           worker answers \"busy\" (default 4G)\n"
            "  --log-level LEVEL        error | warn | info | debug (default info; debug logs every request)\n"
            "  --curve-secret FILE      turn on CurveZMQ: the worker's secret certificate (titan keygen)\n"
            "  --allow-keys DIR         admit only clients whose public certificates are in DIR; the\n"
            "                           directory is re-read while running (add or revoke keys live)\n"
            "  --insecure               allow binding beyond loopback without CURVE (warns)\n"
            "  --drain-timeout MS       on SIGTERM, how long running requests may finish (default 30000)\n"
            "  --heartbeat MS           ZMTP heartbeat interval; dead peers drop after 3x (default 5000, 0 off)\n"
            "  --endpoint-file PATH     write the bound endpoints here once ready (for scripts and tests)\n"
            "  --http [ADDR:]PORT       serve /healthz, /readyz and /metrics (Prometheus) over HTTP; off by\n"
            "                           default; PORT alone listens on 127.0.0.1, ADDR is IPv4 or [IPv6];\n"
            "                           port 0 picks a free one (logged and in --endpoint-file)\n"
            "  --redis URL              also run batch jobs from Redis Streams (docs/JOBS.md):\n"
            "                           redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; off by default\n"
            "  --redis-password P       Redis password; overrides the URL's (prefer the config file)\n"
            "  --redis-prefix NAME      job keys are {NAME}:... (default titan)\n"
            "  --jobs-group G           the Redis consumer group of the workers (default titan-workers)\n"
            "  --visibility-timeout MS  a job pending this long on a worker that stopped answering is\n"
            "                           run by another worker (default 60000)\n"
            "  --max-attempts N         starts of one job before it goes to {NAME}:dead (default 3)\n"
            "  --result-ttl S           seconds a job's record and result are kept once it ended\n"
            "                           (default 86400)\n"
            "  --jobs-inflight N        jobs the consumer keeps in hand at once, 1 to 256 (default 16,\n"
            "                           or the executors if more); enough keeps small jobs flowing past\n"
            "                           Redis round trips; capped at the executors plus the queue share;\n"
            "                           no more are taken while --max-inflight-bytes are in hand\n"
            "  --models DIR             serve the models of DIR's NAME.model.json manifests (inference,\n"
            "                           list_models, load_model, unload_model); off by default\n"
            "  --max-models N           models loaded at once; beyond, the least recently used is\n"
            "                           unloaded (default 8)\n"
            "  --model-memory-mb N      budget of the loaded models, estimated from their files' sizes\n"
            "                           (default 4096)\n"
            "  --tensor-memory-mb N     memory for resident tensors (tensor_put, matrix_multiply \"keep\"),\n"
            "                           all clients together (default 0: half the GPU's memory, a\n"
            "                           quarter of RAM on the CPU); going over is an error, never an eviction\n"
            "  --tensor-quota-mb N      one client's share of it (default 0: all of it)\n"
            "  --max-tensors N          resident tensors one client may hold (default 4096; 0: none)\n"
            "  --tensor-ttl S           free resident tensors no request used for S seconds (default 0:\n"
            "                           keep them until tensor_free or a restart)\n"
            "  --tensor-orphan-ttl S    without CURVE, free a client's resident tensors S seconds after its\n"
            "                           connection closed, unless it reconnects with the same routing id\n"
            "                           (default 600; 0: keep them)\n"
            "  --max-worker-tensors N   resident tensors all clients together may hold (default 65536)\n"
            "  --pool-cache-mb N        CUDA: free device memory kept for reuse, so that steady state does\n"
            "                           not allocate (default 0: a quarter of the GPU's memory)\n"
            "  --config FILE            read settings from FILE: 'key = value' lines with the option\n"
            "                           names above (bind may repeat); command-line options win\n"
            "  --version                print the version and exit\n"
            "  -h, --help               print this help and exit\n"
            "\n"
            "Examples:\n"
            "  titan-worker                                  # CPU or GPU, on tcp://127.0.0.1:5555\n"
            "  titan-worker --bind tcp://0.0.0.0:5555 --curve-secret worker_secret --allow-keys clients/\n"
            "  titan ping                                    # from another shell\n");
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

int main(int argc, char **argv)
{
    /* Every option with val >= O_SETTING is a setting, named as in the config file. */
    enum { O_CONFIG = 1000, O_VERSION, O_SETTING };
    static const struct option longopts[] = {
        {"bind", required_argument, 0, O_SETTING},
        {"device", required_argument, 0, O_SETTING + 1},
        {"threads", required_argument, 0, O_SETTING + 2},
        {"blas-threads", required_argument, 0, O_SETTING + 3},
        {"queue", required_argument, 0, O_SETTING + 4},
        {"max-queue", required_argument, 0, O_SETTING + 5},
        {"max-request-bytes", required_argument, 0, O_SETTING + 6},
        {"max-result-bytes", required_argument, 0, O_SETTING + 7},
        {"max-inflight-bytes", required_argument, 0, O_SETTING + 8},
        {"log-level", required_argument, 0, O_SETTING + 9},
        {"endpoint-file", required_argument, 0, O_SETTING + 10},
        {"curve-secret", required_argument, 0, O_SETTING + 11},
        {"allow-keys", required_argument, 0, O_SETTING + 12},
        {"insecure", no_argument, 0, O_SETTING + 13},
        {"drain-timeout", required_argument, 0, O_SETTING + 14},
        {"heartbeat", required_argument, 0, O_SETTING + 15},
        {"max-client-share", required_argument, 0, O_SETTING + 16},
        {"redis", required_argument, 0, O_SETTING + 17},
        {"redis-password", required_argument, 0, O_SETTING + 18},
        {"redis-prefix", required_argument, 0, O_SETTING + 19},
        {"jobs-group", required_argument, 0, O_SETTING + 20},
        {"visibility-timeout", required_argument, 0, O_SETTING + 21},
        {"max-attempts", required_argument, 0, O_SETTING + 22},
        {"result-ttl", required_argument, 0, O_SETTING + 23},
        {"jobs-inflight", required_argument, 0, O_SETTING + 24},
        {"http", required_argument, 0, O_SETTING + 25},
        {"models", required_argument, 0, O_SETTING + 26},
        {"max-models", required_argument, 0, O_SETTING + 27},
        {"model-memory-mb", required_argument, 0, O_SETTING + 28},
        {"tensor-memory-mb", required_argument, 0, O_SETTING + 29},
        {"tensor-quota-mb", required_argument, 0, O_SETTING + 30},
        {"max-tensors", required_argument, 0, O_SETTING + 31},
        {"tensor-ttl", required_argument, 0, O_SETTING + 32},
        {"pool-cache-mb", required_argument, 0, O_SETTING + 33},
        {"tensor-orphan-ttl", required_argument, 0, O_SETTING + 34},
        {"max-worker-tensors", required_argument, 0, O_SETTING + 35},
        {"config", required_argument, 0, O_CONFIG},
        {"version", no_argument, 0, O_VERSION},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    titan_config file_cfg;
    titan_config_init(&file_cfg);
    char err[512];
    const char *config_path = NULL;
    /* Remember the command-line settings, apply them over the file's afterwards. */
    const char *cli_keys[64], *cli_vals[64];
    int ncli = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            s_usage(stdout);
            return 0;
        case O_VERSION:
            printf("titan-worker %s (protocol %d; model runners: %s)\n", TITAN_VERSION, TITAN_PROTOCOL_VERSION,
                   S_NRUNNERS ? "torchscript" : "none");
            return 0;
        case O_CONFIG:
            config_path = optarg;
            break;
        default:
            if (c >= O_SETTING && ncli < 64) {
                for (const struct option *o = longopts; o->name; o++) {
                    if (o->val == c) {
                        cli_keys[ncli] = o->name;
                        cli_vals[ncli++] = o->has_arg == no_argument ? "true" : optarg;
                    }
                }
                break;
            }
            fprintf(stderr, "Try 'titan-worker --help'.\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "titan-worker: unexpected argument '%s'\nTry 'titan-worker --help'.\n", argv[optind]);
        return 2;
    }
    titan_config *cfg = &file_cfg;
    if (config_path && titan_config_load(cfg, config_path, err, sizeof(err))) {
        fprintf(stderr, "titan-worker: %s\n", err);
        return 2;
    }
    /* Binds on the command line replace the file's rather than add to them. */
    bool cli_binds = false;
    for (int i = 0; i < ncli; i++) cli_binds |= strcmp(cli_keys[i], "bind") == 0;
    if (cli_binds) {
        for (int i = 0; i < cfg->nbinds; i++) free(cfg->binds[i]);
        cfg->nbinds = 0;
    }
    for (int i = 0; i < ncli; i++) {
        if (titan_config_set(cfg, cli_keys[i], cli_vals[i], err, sizeof(err))) {
            fprintf(stderr, "titan-worker: %s\nTry 'titan-worker --help'.\n", err);
            titan_config_free(cfg);
            return 2;
        }
    }
    if (cfg->nbinds == 0) titan_config_set(cfg, "bind", "tcp://127.0.0.1:5555", err, sizeof(err));
    if (!cfg->device) titan_config_set(cfg, "device", "auto", err, sizeof(err));
    if (titan_jobs_consumer_check(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "titan-worker: %s\nTry 'titan-worker --help'.\n", err);
        titan_config_free(cfg);
        return 2;
    }
    if (cfg->log_level && titan_log_set_level_name(cfg->log_level)) {
        fprintf(stderr, "titan-worker: --log-level must be error, warn, info or debug, not '%s'\n", cfg->log_level);
        titan_config_free(cfg);
        return 2;
    }

    titan_sysinfo si;
    titan_sysinfo_read(&si);
    titan_worker_ctx w;
    memset(&w, 0, sizeof(w));
    w.threads = cfg->threads > 0 ? cfg->threads : si.cores;
    w.blas_threads = cfg->blas_threads > 0 ? cfg->blas_threads : si.cores;
    w.queue = cfg->queue;
    w.limits.max_request_bytes = cfg->max_request_bytes;
    w.limits.max_result_bytes = cfg->max_result_bytes;
    w.limits.max_inflight_bytes = cfg->max_inflight_bytes;
    titan_server *srv = NULL;
    titan_http *http = NULL;
    titan_jobs_consumer *jobs = NULL;
    bool ops_ready = false;
    titan_metrics *metrics = titan_metrics_new();
    if (!metrics) {
        titan_log(TITAN_LOG_ERROR, "out of memory");
        titan_config_free(cfg);
        return 1;
    }
    titan_metrics_set_limits(metrics, w.threads, w.queue);
    w.load = titan_metrics_load;
    w.load_arg = metrics;

    /* Only the main thread takes SIGINT/SIGTERM: block them while threads are created. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int rc = 0;
    if (cfg->http) {
        /* First, so that probes see "starting" (/readyz 503) while the device opens. */
        pthread_sigmask(SIG_BLOCK, &set, &old);
        http = titan_http_start(cfg->http, metrics, err, sizeof(err));
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!http) {
            titan_log(TITAN_LOG_ERROR, "%s", err);
            rc = -EINVAL;
            goto out;
        }
        if (titan_http_public(http))
            titan_log(TITAN_LOG_WARN,
                      "HTTP on %s is reachable beyond loopback, without authentication: /metrics is "
                      "read-only but tells the load, the device and the version; firewall it to your "
                      "Prometheus",
                      titan_http_url(http));
    }
    char why[512] = "";
    titan_cuda_opts copts = {.pool_cache_bytes = cfg->pool_cache_mb << 20, .executors = w.threads};
    bool why_warns = false;
    rc = titan_backend_select(cfg->device, w.blas_threads, &copts, &w.backend, why, sizeof(why), &why_warns, err,
                              sizeof(err));
    if (rc) {
        titan_log(TITAN_LOG_ERROR, "%s", err);
        goto out;
    }
    /* Routine (no GPU at all) at debug, so that a CPU worker still starts with one line at info. */
    if (why[0]) titan_log(why_warns ? TITAN_LOG_WARN : TITAN_LOG_DEBUG, "--device %s: %s", cfg->device, why);
    {
        /* What the backend sets aside for itself (cuBLAS's workspaces) is not the tensors' to take. */
        uint64_t dev_bytes = (uint64_t)(w.backend->info.total_memory_gb * 1e9);
        dev_bytes = dev_bytes > w.backend->info.reserved_bytes ? dev_bytes - w.backend->info.reserved_bytes : 0;
        titan_tstore_quota q = {
            .worker_bytes = cfg->tensor_memory_mb ? cfg->tensor_memory_mb << 20
                                                  : (strcmp(w.backend->info.backend, "cpu") == 0 ? dev_bytes / 4
                                                                                                 : dev_bytes / 2),
            .client_tensors = cfg->max_tensors,
            .idle_ttl_s = cfg->tensor_ttl_s,
            .worker_tensors = (uint64_t)cfg->max_worker_tensors,
            .orphan_ttl_s = cfg->tensor_orphan_ttl_s,
        };
        q.client_bytes = cfg->tensor_quota_mb ? cfg->tensor_quota_mb << 20 : q.worker_bytes;
        if (q.client_bytes > q.worker_bytes) q.client_bytes = q.worker_bytes;
        w.tensors = titan_tstore_new(w.backend, &q);
        if (!w.tensors || (rc = titan_tstore_start_sweeper(w.tensors)) != 0) {
            titan_log(TITAN_LOG_ERROR, "cannot set up resident tensors: %s",
                      w.tensors ? strerror(-rc) : "out of memory");
            rc = w.tensors ? rc : -ENOMEM;
            goto out;
        }
        titan_metrics_set_tensors(metrics, w.tensors);
    }
    titan_metrics_set_backend(metrics, w.backend);
    if (titan_ops_init(&w)) {
        titan_log(TITAN_LOG_ERROR, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    ops_ready = true;
    char runner_info[128] = "torchscript (loaded with --models)";
    const titan_runner *runners[1] = {NULL};
    if (S_NRUNNERS) w.runner_info = runner_info;
    /* --models without a runner would serve nothing: the worker refuses to start (exit status 1),
     * as it does for a --device it cannot use. */
    if (cfg->models && !S_NRUNNERS) {
        titan_log(TITAN_LOG_ERROR, "--models %s: this titan-worker was built without a model runner; %s", cfg->models,
                  S_RUNNER_HOWTO);
        rc = -ENOTSUP;
        goto out;
    }
    if (cfg->models) {
        runners[0] = s_open_runner(err, sizeof(err));
        if (!runners[0]) {
            titan_log(TITAN_LOG_ERROR, "%s; %s", err, S_RUNNER_HOWTO);
            rc = -EINVAL;
            goto out;
        }
        runners[0]->describe(runner_info, sizeof(runner_info));
        w.models = titan_models_new(cfg->models, runners, S_NRUNNERS, cfg->max_models, cfg->model_memory_mb << 20,
                                    s_note_model, err, sizeof(err));
        if (!w.models) {
            titan_log(TITAN_LOG_ERROR, "%s", err);
            rc = -EINVAL;
            goto out;
        }
        json_t *l = titan_models_list(w.models);
        titan_log(TITAN_LOG_INFO, "serving %zu model(s) from %s (%s; at most %d loaded, %llu MB)", json_array_size(l),
                  cfg->models, runner_info, cfg->max_models, (unsigned long long)cfg->model_memory_mb);
        json_decref(l);
    }

    pthread_sigmask(SIG_BLOCK, &set, &old);
    srv = titan_server_new(cfg, &w, metrics, err, sizeof(err));
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!srv) {
        titan_log(TITAN_LOG_ERROR, "%s", err);
        rc = -EINVAL;
        goto out;
    }
    if (pipe2(s_wake, O_NONBLOCK | O_CLOEXEC) != 0) s_wake[0] = s_wake[1] = -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char eps[2048];
    snprintf(eps, sizeof(eps), "%s", titan_server_endpoints(srv));
    for (char *p = eps; (p = strchr(p, '\n')) && p[1]; p++) *p = ' ';
    eps[strcspn(eps, "\n")] = '\0';
    titan_log(TITAN_LOG_INFO,
              "titan-worker %s listening on %s (device %s: %s; %d executors, %d BLAS threads, queue %d, "
              "max request %llu bytes; resident tensors %llu MB, %llu MB and %d tensors per client%s)",
              TITAN_VERSION, eps, w.backend->info.backend, w.backend->info.name, w.threads, w.blas_threads, w.queue,
              (unsigned long long)w.limits.max_request_bytes,
              (unsigned long long)(titan_tstore_get_quota(w.tensors)->worker_bytes >> 20),
              (unsigned long long)(titan_tstore_get_quota(w.tensors)->client_bytes >> 20),
              titan_tstore_get_quota(w.tensors)->client_tensors,
              cfg->tensor_ttl_s ? ", idle ones freed at --tensor-ttl" : "");
    if (http) titan_log(TITAN_LOG_INFO, "HTTP /healthz, /readyz and /metrics on %s", titan_http_url(http));
    /* Jobs go through the same admission as ZeroMQ requests, so the consumer starts once the
     * server is up. On SIGTERM it starts no new job, the server drains the one in hand (a job
     * still queued gets "shutting_down": its start is undone and its entry stays pending in Redis
     * for another worker), and the consumer is stopped once the server has drained. */
    if (cfg->redis_url) {
        jobs = titan_jobs_consumer_start(cfg, titan_server_zmq_ctx(srv), metrics, err, sizeof(err));
        if (!jobs) {
            titan_log(TITAN_LOG_ERROR, "%s", err);
            rc = -EINVAL;
        } else {
            titan_jobs_consumer_watch(jobs, &s_stop);
        }
    }
    /* Last, so that whoever waits for the file finds the worker whole (its job consumer too). The
     * ZeroMQ endpoints come first, one per line, then the HTTP address, if any. */
    if (rc == 0 && cfg->endpoint_file) {
        char file[2200];
        snprintf(file, sizeof(file), "%s%s%s", titan_server_endpoints(srv), http ? titan_http_url(http) : "",
                 http ? "\n" : "");
        rc = s_write_endpoint_file(cfg->endpoint_file, file);
        if (rc) titan_log(TITAN_LOG_ERROR, "cannot write %s: %s", cfg->endpoint_file, strerror(-rc));
    }
    if (rc == 0) {
        char status[2300];
        snprintf(status, sizeof(status), "serving on %s (%s)", eps, w.backend->info.backend);
        /* A signal that came first has its drain under way: stay "draining" then. */
        if (!s_stop) titan_metrics_set_state(metrics, TITAN_STATE_SERVING);
        titan_notify_ready(status);
    }
    rc = rc ? rc : titan_server_run(srv, &s_stop, s_wake[0]);
    titan_jobs_consumer_stop(&jobs);
    unsigned long long served, errors, dropped, refused;
    titan_server_counts(srv, &served, &errors, &dropped, &refused);
    char refused_txt[64] = "";
    if (refused) snprintf(refused_txt, sizeof(refused_txt), ", %llu clients refused", refused);
    if (titan_server_abandoned(srv) > 0) {
        /* A product is still computing: waiting for its threads (BLAS joins them at exit)
         * would outlast the drain timeout, so leave now. */
        titan_log(TITAN_LOG_INFO,
                  "titan-worker stopped after %llu request%s (%llu answered with errors, %llu replies "
                  "undeliverable%s, %d abandoned at the drain timeout)",
                  served, served == 1 ? "" : "s", errors, dropped, refused_txt, titan_server_abandoned(srv));
        fflush(stderr);
        _exit(rc ? 1 : 0);
    }
    titan_server_destroy(&srv);
    titan_log(TITAN_LOG_INFO,
              "titan-worker stopped after %llu request%s (%llu answered with errors, %llu replies undeliverable%s)",
              served, served == 1 ? "" : "s", errors, dropped, refused_txt);
out:
    /* The HTTP thread reads the metrics and the backend: it stops first. */
    titan_jobs_consumer_stop(&jobs);
    titan_server_destroy(&srv);
    titan_http_stop(&http);
    titan_metrics_set_backend(metrics, NULL);
    titan_metrics_set_tensors(metrics, NULL);
    if (ops_ready) titan_ops_fini(&w);
    titan_models_destroy(&w.models);
    titan_tstore_destroy(&w.tensors);
    titan_backend_destroy(&w.backend);
    titan_metrics_destroy(&metrics);
    titan_config_free(cfg);
    return rc ? 1 : 0;
}
