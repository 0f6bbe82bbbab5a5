/* bench_router.c - libtitan's router (compute_backends.yaml) against direct titan_client calls: the
 * cost per small request, and a float32 matmul split over two single-threaded titan-workers.
 *
 * Starts its own titan-workers (the path is the argument), writes the YAML files into a temporary
 * directory, and measures everything in the same run:
 *  1. overhead: pings and 16x16 float32 products, direct titan_client against titan_router_call /
 *     titan_router_matmul with one backend, and with a dead backend of higher priority whose breaker
 *     is already open; the three take turns in rounds, the medians of all requests are reported;
 *  2. split: n x n float32 products on one worker (--threads 1 --blas-threads 1) through
 *     titan_router_matmul, split over two such workers with titan_router_matmul_split, and on one
 *     worker with --blas-threads 2; the three take turns, the medians are reported.
 * Prints `router measure=... key=value ...` lines. Exits 0, 1 when something failed (a worker did not
 * start or died, a call failed, a wrong product), 2 for a usage error. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "titan/titan.h"

#include "benchutil.h"

#define MAX_SIZES 8
#define NWORKERS 3
/* tcpmux: nothing listens there on a normal host (main checks that its breaker opens) */
#define DEAD_ENDPOINT "tcp://127.0.0.1:1"

/* ---- small helpers ---- */

/* CPU time of this process, all threads, in seconds. */
static double s_cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void s_sleep(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Sorts t[0..n) and returns its quantile q (0.5: the median). */
static double s_quantile(double *t, int n, double q)
{
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    if (q == 0.5) return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    int i = (int)ceil(q * n) - 1;
    return t[i < 0 ? 0 : i >= n ? n - 1 : i];
}

/* Uniform in [-1, 1) from a fixed-seed xorshift (as bench_matmul), so every run multiplies the same. */
static void s_fill(float *x, size_t count, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < count; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((double)(s >> 40) / (double)(1ull << 23) - 1.0);
    }
}

/* ---- the workers ---- */

typedef struct {
    const char *label;
    const char *args[6]; /* extra titan-worker arguments, NULL-terminated */
    bool ready;
    pid_t pid;
    bool reaped;
    int status;
    char endpoint[256];
    char epfile[PATH_MAX];
    char log[PATH_MAX];
} s_worker;

static char s_tmp[1024];
/* Every file this program (or a worker) writes in s_tmp, as full paths once s_tmp exists. */
static const char *const s_tmp_names[] = {"A.ep",     "A.log",      "B.ep",        "B.log",
                                          "C.ep",     "C.log",      "routed.yaml", "dead.yaml",
                                          "one.yaml", "split.yaml", "two.yaml"};
#define NTMP (sizeof s_tmp_names / sizeof *s_tmp_names)
static char s_tmp_paths[NTMP][sizeof s_tmp + 16];
/* For the signal handler: the workers still to stop. */
static volatile pid_t s_pids[NWORKERS];

/* Removes the temporary directory (async-signal-safe: unlink and rmdir only). Returns rmdir's result. */
static int s_remove_tmp(void)
{
    for (size_t i = 0; i < NTMP; i++)
        if (s_tmp_paths[i][0]) unlink(s_tmp_paths[i]);
    return s_tmp[0] ? rmdir(s_tmp) : 0;
}

static void s_on_signal(int sig)
{
    for (int i = 0; i < NWORKERS; i++)
        if (s_pids[i] > 0) kill(s_pids[i], SIGTERM);
    s_remove_tmp();
    _exit(128 + sig);
}

static void s_log_tail(const s_worker *w)
{
    FILE *f = fopen(w->log, "r");
    if (!f) return;
    char line[512];
    int n = 0;
    fprintf(stderr, "bench_router: the log of worker %s:\n", w->label);
    while (fgets(line, sizeof line, f) && n++ < 40)
        fprintf(stderr, "  %s", line);
    fclose(f);
}

/* Starts `worker` with its arguments and waits (up to 20 s) for its endpoint file. Returns 0 or -1. */
static int s_worker_start(const char *path, s_worker *w, int slot)
{
    snprintf(w->epfile, sizeof w->epfile, "%s/%s.ep", s_tmp, w->label);
    snprintf(w->log, sizeof w->log, "%s/%s.log", s_tmp, w->label);
    const char *argv[16];
    int n = 0;
    argv[n++] = path;
    argv[n++] = "--bind";
    argv[n++] = "tcp://127.0.0.1:*";
    argv[n++] = "--endpoint-file";
    argv[n++] = w->epfile;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (int i = 0; w->args[i]; i++)
        argv[n++] = w->args[i];
    argv[n] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "bench_router: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* The worker goes when this program goes, even if it is killed. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        int fd = open(w->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        execv(path, (char *const *)argv);
        fprintf(stderr, "bench_router: cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    w->pid = pid;
    s_pids[slot] = pid;
    for (int i = 0; i < 2000; i++) {
        FILE *f = fopen(w->epfile, "r");
        if (f) {
            bool ok = fgets(w->endpoint, sizeof w->endpoint, f) != NULL;
            fclose(f);
            w->endpoint[strcspn(w->endpoint, "\r\n")] = '\0';
            if (ok && w->endpoint[0]) {
                w->ready = true;
                return 0;
            }
        }
        if (waitpid(pid, &w->status, WNOHANG) == pid) {
            w->reaped = true;
            s_pids[slot] = 0;
            fprintf(stderr, "bench_router: worker %s exited before it was ready\n", w->label);
            s_log_tail(w);
            return -1;
        }
        s_sleep(0.01);
    }
    fprintf(stderr, "bench_router: worker %s did not write %s within 20 s\n", w->label, w->epfile);
    s_log_tail(w);
    return -1;
}

/* True while the worker runs. */
static bool s_worker_alive(s_worker *w)
{
    if (w->pid <= 0 || w->reaped) return false;
    if (waitpid(w->pid, &w->status, WNOHANG) == w->pid) {
        w->reaped = true;
        return false;
    }
    return true;
}

/* SIGTERM, up to 5 s to drain, then SIGKILL. */
static void s_workers_stop(s_worker *ws, int n)
{
    for (int i = 0; i < n; i++)
        if (ws[i].pid > 0 && !ws[i].reaped) kill(ws[i].pid, SIGTERM);
    for (int i = 0; i < n; i++) {
        s_worker *w = &ws[i];
        if (w->pid <= 0 || w->reaped) continue;
        for (int k = 0; k < 500 && !w->reaped; k++) {
            if (waitpid(w->pid, &w->status, WNOHANG) == w->pid)
                w->reaped = true;
            else
                s_sleep(0.01);
        }
        if (!w->reaped) {
            fprintf(stderr, "bench_router: worker %s did not stop within 5 s of SIGTERM; killing it\n",
                    w->label);
            kill(w->pid, SIGKILL);
            waitpid(w->pid, &w->status, 0);
            w->reaped = true;
        }
        s_pids[i] = 0;
    }
}

/* ---- YAML files ---- */

/* Writes `text` to s_tmp/name and the path to path[]. Returns 0 or -1. */
static int s_write_yaml(const char *name, const char *text, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", s_tmp, name);
    FILE *f = fopen(path, "w");
    bool ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = false;
    if (!ok) {
        fprintf(stderr, "bench_router: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static titan_router *s_router(const char *name, const char *yaml, void *zctx)
{
    char path[PATH_MAX], err[512];
    if (s_write_yaml(name, yaml, path, sizeof path) != 0) return NULL;
    titan_router_opts o;
    titan_router_opts_init(&o);
    o.zmq_ctx = zctx;
    titan_router *r = titan_router_new_from_file(path, &o, err, sizeof err);
    if (!r) {
        fprintf(stderr, "bench_router: %s: %s\n", path, err);
        return NULL;
    }
    const char *warn = titan_router_warnings(r);
    if (warn[0]) {
        fprintf(stderr, "bench_router: %s: %s", path, warn);
        titan_router_destroy(&r);
    }
    return r;
}

/* ---- 1. overhead per request ---- */

enum { M_DIRECT, M_ROUTED, M_DEAD, M_COUNT };
static const char *const s_method_name[M_COUNT] = {"direct", "routed", "routed+open-breaker"};

typedef enum { OP_PING, OP_MATMUL16 } s_op;

typedef struct {
    titan_client *client;
    titan_router *routed; /* one backend: the worker */
    titan_router *dead;   /* the dead backend (priority 1, breaker open), then the worker */
    float a[256], b[256], out[256], ref[256];
} s_overhead;

/* One request by method m, timed. Returns seconds, or -1 (with a message) when it failed. */
static double s_one(s_overhead *o, s_op op, int m)
{
    static const char ping[] = "{\"op\":\"ping\"}";
    titan_reply *rep = NULL;
    titan_route_info info;
    void *out = o->out;
    int rc;
    memset(o->out, 0xff, sizeof o->out); /* NaNs: a call that writes nothing fails the check */
    double t0 = bench_now();
    if (op == OP_PING) {
        if (m == M_DIRECT)
            rc = titan_client_call(o->client, ping, NULL, 0, &rep);
        else
            rc = titan_router_call(m == M_ROUTED ? o->routed : o->dead, ping, NULL, 0, NULL, &rep, &info);
    } else {
        if (m == M_DIRECT)
            rc = titan_client_matmul(o->client, TITAN_DTYPE_FLOAT32, 16, 16, 16, o->a, o->b, &out);
        else
            rc = titan_router_matmul(m == M_ROUTED ? o->routed : o->dead, TITAN_DTYPE_FLOAT32, 16, 16, 16,
                                     o->a, o->b, &out, &info);
    }
    double t = bench_now() - t0;

    const char *what = op == OP_PING ? "ping" : "matmul 16x16";
    if (rc != 0) {
        fprintf(stderr, "bench_router: %s %s failed: %s (%s)\n", s_method_name[m], what, strerror(-rc),
                m == M_DIRECT ? titan_client_last_error(o->client) : info.error);
        titan_reply_destroy(&rep);
        return -1;
    }
    bool ok = true;
    if (op == OP_PING) {
        const char *h = titan_reply_header(rep);
        ok = h && strstr(h, "\"status\":\"ok\"") && !strstr(h, "\"error\"");
        if (!ok)
            fprintf(stderr, "bench_router: %s ping answered %s\n", s_method_name[m], h ? h : "(nothing)");
        titan_reply_destroy(&rep);
    } else {
        for (int i = 0; i < 256 && ok; i++)
            ok = fabsf(o->out[i] - o->ref[i]) <= 1e-4f; /* false for NaN */
        if (!ok)
            fprintf(stderr, "bench_router: %s matmul 16x16 answered a wrong product\n", s_method_name[m]);
    }
    /* The route must be the expected one: the worker, with the dead backend skipped when listed. */
    if (ok && m != M_DIRECT) {
        int want_backend = m == M_ROUTED ? 0 : 1, want_skipped = m == M_ROUTED ? 0 : 1;
        if (info.backend != want_backend || info.skipped_failed != want_skipped || info.tried != 1) {
            fprintf(stderr,
                    "bench_router: %s %s took an unexpected route: backend %d (want %d), tried %d (want 1), "
                    "skipped_failed %d (want %d)\n",
                    s_method_name[m], what, info.backend, want_backend, info.tried, info.skipped_failed,
                    want_skipped);
            ok = false;
        }
    }
    return ok ? t : -1;
}

/* Warm-up, then `rounds` rounds of `per_round` requests by each method, the first method of each round
 * turning. Prints one `router measure=overhead` line. Returns 0 or -1. */
static int s_bench_overhead(s_overhead *o, s_op op, int rounds, int per_round, int warmup)
{
    int total = rounds * per_round, rc = -1;
    double *t[M_COUNT] = {0}, *rdiff[M_COUNT] = {0}, cpu[M_COUNT] = {0};
    double *blk = malloc((size_t)per_round * sizeof(double));
    for (int m = 0; m < M_COUNT; m++)
        if (!(t[m] = malloc((size_t)total * sizeof(double))) ||
            !(rdiff[m] = malloc((size_t)rounds * sizeof(double))) || !blk) {
            fprintf(stderr, "bench_router: out of memory\n");
            goto out;
        }
    for (int m = 0; m < M_COUNT; m++)
        for (int i = 0; i < warmup; i++)
            if (s_one(o, op, m) < 0) goto out;
    for (int r = 0; r < rounds; r++) {
        double rmed[M_COUNT];
        for (int k = 0; k < M_COUNT; k++) {
            int m = (r + k) % M_COUNT;
            double *tm = t[m] + (size_t)r * (size_t)per_round;
            /* CPU time of this whole process (the caller and ZeroMQ's I/O thread) for the block. */
            double c0 = s_cpu_now();
            for (int i = 0; i < per_round; i++)
                if ((tm[i] = s_one(o, op, m)) < 0) goto out;
            cpu[m] += s_cpu_now() - c0;
            memcpy(blk, tm, (size_t)per_round * sizeof(double));
            rmed[m] = s_quantile(blk, per_round, 0.5);
        }
        /* Paired by round, so that drift between rounds cancels out. */
        for (int m = 0; m < M_COUNT; m++)
            rdiff[m][r] = rmed[m] - rmed[M_DIRECT];
    }
    double med[M_COUNT], p99[M_COUNT], rd[M_COUNT];
    for (int m = 0; m < M_COUNT; m++) {
        med[m] = s_quantile(t[m], total, 0.5) * 1e6;
        p99[m] = s_quantile(t[m], total, 0.99) * 1e6;
        rd[m] = s_quantile(rdiff[m], rounds, 0.5) * 1e6;
        cpu[m] = cpu[m] / total * 1e6;
    }
    printf("router measure=overhead op=%s requests=%d rounds=%d direct_us=%.2f routed_us=%.2f ratio=%.3f "
           "diff_us=%.2f round_diff_us=%.2f dead_us=%.2f dead_ratio=%.3f dead_diff_us=%.2f "
           "dead_round_diff_us=%.2f "
           "direct_p99_us=%.1f routed_p99_us=%.1f dead_p99_us=%.1f direct_cpu_us=%.2f routed_cpu_us=%.2f "
           "dead_cpu_us=%.2f\n",
           op == OP_PING ? "ping" : "matmul16", total, rounds, med[M_DIRECT], med[M_ROUTED],
           med[M_ROUTED] / med[M_DIRECT], med[M_ROUTED] - med[M_DIRECT], rd[M_ROUTED], med[M_DEAD],
           med[M_DEAD] / med[M_DIRECT], med[M_DEAD] - med[M_DIRECT], rd[M_DEAD], p99[M_DIRECT], p99[M_ROUTED],
           p99[M_DEAD], cpu[M_DIRECT], cpu[M_ROUTED], cpu[M_DEAD]);
    fflush(stdout);
    rc = 0;
out:
    for (int m = 0; m < M_COUNT; m++) {
        free(t[m]);
        free(rdiff[m]);
    }
    free(blk);
    return rc;
}

/* ---- 2. split matmul ---- */

enum { S_ONE, S_SPLIT, S_TWO_THREADS, S_COUNT };
static const char *const s_split_name[S_COUNT] = {"one worker (1 BLAS thread)", "split over two workers",
                                                  "one worker (2 BLAS threads)"};

typedef struct {
    titan_router *one;   /* worker A alone */
    titan_router *split; /* workers A and B */
    titan_router *two;   /* worker C (--blas-threads 2) alone */
    double settle_s;
} s_split_cfg;

/* Checks c (n x n) at 256 fixed entries against a dot product in double. Returns the largest error. */
static double s_sample_check(int n, const float *a, const float *b, const float *c)
{
    uint64_t s = 0x2545F4914F6CDD1Dull ^ (uint64_t)n;
    double maxdiff = 0;
    for (int q = 0; q < 256; q++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        size_t i = (size_t)(s % (uint64_t)n), j = (size_t)((s >> 32) % (uint64_t)n);
        double dot = 0;
        for (size_t k = 0; k < (size_t)n; k++)
            dot += (double)a[i * (size_t)n + k] * (double)b[k * (size_t)n + j];
        double d = fabs((double)c[i * (size_t)n + j] - dot);
        if (!(d <= maxdiff)) maxdiff = isnan(d) ? INFINITY : d;
    }
    return maxdiff;
}

/* One product by way w into out. Returns seconds or -1. */
static double s_split_one(const s_split_cfg *cfg, int w, int n, const float *a, const float *b, float *out,
                          titan_route_info *info)
{
    void *dst = out;
    size_t un = (size_t)n;
    double t0 = bench_now();
    int rc;
    if (w == S_SPLIT)
        rc = titan_router_matmul_split(cfg->split, TITAN_DTYPE_FLOAT32, un, un, un, a, b, &dst, info);
    else
        rc = titan_router_matmul(w == S_ONE ? cfg->one : cfg->two, TITAN_DTYPE_FLOAT32, un, un, un, a, b,
                                 &dst, info);
    double t = bench_now() - t0;
    if (rc != 0) {
        fprintf(stderr, "bench_router: n=%d %s failed: %s (%s)\n", n, s_split_name[w], strerror(-rc),
                info->error);
        return -1;
    }
    return t;
}

static int s_bench_split(const s_split_cfg *cfg, int n, int reps, int warmup)
{
    int rc = -1;
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b);
    float *out[S_COUNT] = {0};
    double *t[S_COUNT] = {0};
    for (int w = 0; w < S_COUNT; w++) {
        out[w] = malloc(count * sizeof(float));
        t[w] = malloc((size_t)reps * sizeof(double));
    }
    bool oom = !a || !b;
    for (int w = 0; w < S_COUNT; w++)
        oom = oom || !out[w] || !t[w];
    if (oom) {
        fprintf(stderr, "bench_router: out of memory for n=%d\n", n);
        goto out;
    }
    s_fill(a, count, 1000u + (unsigned)n);
    s_fill(b, count, 2000u + (unsigned)n);

    /* Warm-up: each way at least once, the split `warmup` times so that the router has timed both
     * workers (their measured GFLOP/s set the shares from then on). */
    titan_route_info info;
    for (int w = 0; w < S_COUNT; w++) {
        for (int i = 0; i < (w == S_SPLIT ? warmup : 1); i++) {
            if (s_split_one(cfg, w, n, a, b, out[w], &info) < 0) goto out;
            s_sleep(cfg->settle_s);
        }
    }
    for (int i = 0; i < 2; i++) {
        titan_backend_status st;
        if (titan_router_backend_status(cfg->split, (size_t)i, &st) != 0) {
            fprintf(stderr, "bench_router: titan_router_backend_status failed\n");
            goto out;
        }
        if (!(st.gflops > 0))
            fprintf(stderr,
                    "bench_router: note: n=%d: the router has not timed backend %d after the warm-up\n", n,
                    i);
    }

    titan_route_info last_split;
    memset(&last_split, 0, sizeof last_split);
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < S_COUNT; k++) {
            int w = (r + k) % S_COUNT;
            /* Let the last product's BLAS threads stop spinning before the next one starts. */
            s_sleep(cfg->settle_s);
            if ((t[w][r] = s_split_one(cfg, w, n, a, b, out[w], &info)) < 0) goto out;
            if (w == S_SPLIT) last_split = info;
        }

    /* Products: each checked at sampled entries; the split against the single worker's, entry by entry. */
    double tol = 1e-5 * n + 1e-4, sample[S_COUNT], split_vs_one = 0;
    bool ok = true;
    for (int w = 0; w < S_COUNT; w++) {
        sample[w] = s_sample_check(n, a, b, out[w]);
        ok = ok && sample[w] <= tol;
    }
    for (size_t i = 0; i < count; i++) {
        double d = fabs((double)out[S_SPLIT][i] - (double)out[S_ONE][i]);
        if (!(d <= split_vs_one)) split_vs_one = isnan(d) ? INFINITY : d;
    }
    ok = ok && split_vs_one <= tol;

    double med[S_COUNT], best[S_COUNT];
    for (int w = 0; w < S_COUNT; w++) {
        med[w] = s_quantile(t[w], reps, 0.5) * 1e3;
        best[w] = t[w][0] * 1e3; /* sorted by s_quantile */
    }
    char rows[128] = "";
    for (int p = 0; p < last_split.nparts; p++) {
        size_t len = strlen(rows);
        snprintf(rows + len, sizeof rows - len, "%s%zu", p ? "+" : "", last_split.part[p].rows);
    }
    titan_backend_status sa, sb;
    if (titan_router_backend_status(cfg->split, 0, &sa) != 0 ||
        titan_router_backend_status(cfg->split, 1, &sb)) {
        fprintf(stderr, "bench_router: titan_router_backend_status failed\n");
        goto out;
    }
    printf("router measure=split n=%d reps=%d one_ms=%.2f split_ms=%.2f speedup=%.3f two_thread_ms=%.2f "
           "speedup_vs_two_thread=%.3f one_best_ms=%.2f split_best_ms=%.2f two_thread_best_ms=%.2f parts=%d "
           "rows=%s gflops_a=%.1f gflops_b=%.1f maxdiff_sampled=%.3g maxdiff_split_vs_one=%.3g check=%s\n",
           n, reps, med[S_ONE], med[S_SPLIT], med[S_ONE] / med[S_SPLIT], med[S_TWO_THREADS],
           med[S_TWO_THREADS] / med[S_SPLIT], best[S_ONE], best[S_SPLIT], best[S_TWO_THREADS],
           last_split.nparts, rows[0] ? rows : "-", sa.gflops, sb.gflops,
           fmax(fmax(sample[0], sample[1]), sample[2]), split_vs_one, ok ? "ok" : "WRONG");
    fflush(stdout);
    if (!ok) {
        fprintf(stderr,
                "bench_router: n=%d: a wrong product (sampled errors %.3g %.3g %.3g, split vs one %.3g, "
                "tolerance %.3g)\n",
                n, sample[0], sample[1], sample[2], split_vs_one, tol);
        goto out;
    }
    /* Too few rows (or very uneven shares) can leave one worker without rows: then there is no split
     * to measure, which the line shows (parts=1); it is not a failure of the router. */
    if (last_split.nparts != 2)
        fprintf(stderr, "bench_router: note: n=%d: the split used %d part(s), not 2\n", n, last_split.nparts);
    rc = 0;
out:
    free(a);
    free(b);
    for (int w = 0; w < S_COUNT; w++) {
        free(out[w]);
        free(t[w]);
    }
    return rc;
}

/* ---- main ---- */

static void s_usage(FILE *f)
{
    fprintf(f, "usage: bench_router [options] TITAN_WORKER\n"
               "  TITAN_WORKER       the titan-worker program (or the build directory that holds it)\n"
               "  --rounds N         overhead: rounds in which the three ways take turns (default 20)\n"
               "  --per-round N      overhead: requests by each way in a round (default 250)\n"
               "  --warmup N         overhead: untimed requests by each way first (default 300)\n"
               "  --sizes LIST       split: square sizes n (default 1024,2048)\n"
               "  --reps N           split: timed products by each way per size (default 11)\n"
               "  --settle S         split: pause before each product (default 0.2)\n"
               "Starts three titan-workers on tcp://127.0.0.1:* (A and B with --threads 1 --blas-threads 1,\n"
               "C with --blas-threads 2) and stops them at the end. Prints `router measure=...` lines.\n");
}

int main(int argc, char **argv)
{
    int rounds = 20, per_round = 250, warmup = 300, reps = 11, nsizes = 2, sizes[MAX_SIZES] = {1024, 2048};
    double settle_s = 0.2;
    const char *worker_arg = NULL;
    long l = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = v != NULL;
        if (!strcmp(a, "--rounds") && v)
            ok = bench_parse_long(v, 1, 100000, &l), rounds = ok ? (int)l : rounds;
        else if (!strcmp(a, "--per-round") && v)
            ok = bench_parse_long(v, 1, 1000000, &l), per_round = ok ? (int)l : per_round;
        else if (!strcmp(a, "--warmup") && v)
            ok = bench_parse_long(v, 0, 1000000, &l), warmup = ok ? (int)l : warmup;
        else if (!strcmp(a, "--reps") && v)
            ok = bench_parse_long(v, 1, 1000, &l), reps = ok ? (int)l : reps;
        else if (!strcmp(a, "--sizes") && v)
            ok = bench_parse_sizes(v, 2, 8192, sizes, MAX_SIZES, &nsizes);
        else if (!strcmp(a, "--settle") && v) {
            char *end;
            settle_s = strtod(v, &end);
            ok = end != v && !*end && settle_s >= 0 && settle_s <= 10;
        } else {
            takes = false;
            if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                s_usage(stdout);
                return 0;
            } else if (a[0] != '-' && !worker_arg)
                worker_arg = a;
            else
                ok = false;
        }
        if (!ok) {
            fprintf(stderr, "bench_router: bad argument: %s%s%s\n", a, takes ? " " : "", takes ? v : "");
            s_usage(stderr);
            return 2;
        }
        if (takes) i++;
    }
    if (!worker_arg || (long)rounds * per_round > 10000000) {
        s_usage(stderr);
        return 2;
    }
    char worker[PATH_MAX];
    struct stat st;
    if (stat(worker_arg, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(worker, sizeof worker, "%s/titan-worker", worker_arg);
    else
        snprintf(worker, sizeof worker, "%s", worker_arg);
    if (access(worker, X_OK) != 0) {
        fprintf(stderr, "bench_router: %s is not an executable titan-worker\n", worker);
        return 2;
    }

    const char *tmpdir = getenv("TMPDIR");
    snprintf(s_tmp, sizeof s_tmp, "%s/titan-bench-router.XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (!mkdtemp(s_tmp)) {
        fprintf(stderr, "bench_router: mkdtemp %s: %s\n", s_tmp, strerror(errno));
        s_tmp[0] = '\0';
        return 1;
    }
    for (size_t i = 0; i < NTMP; i++)
        snprintf(s_tmp_paths[i], sizeof s_tmp_paths[i], "%s/%s", s_tmp, s_tmp_names[i]);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    s_worker ws[NWORKERS] = {
        {.label = "A", .args = {"--threads", "1", "--blas-threads", "1"}},
        {.label = "B", .args = {"--threads", "1", "--blas-threads", "1"}},
        {.label = "C", .args = {"--blas-threads", "2", NULL}},
    };
    int rc = 1;
    void *zctx = NULL;
    titan_client *client = NULL;
    titan_router *routers[5] = {NULL};
    s_overhead *o = NULL;
    for (int i = 0; i < NWORKERS; i++)
        if (s_worker_start(worker, &ws[i], i) != 0) goto out;

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    double load1 = -1;
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        if (fscanf(lf, "%lf", &load1) != 1) load1 = -1;
        fclose(lf);
    }
    printf("router measure=setup cores=%ld loadavg_1min=%.2f worker_a=%s worker_b=%s worker_c=%s "
           "a_b_args=\"--threads 1 --blas-threads 1\" c_args=\"--blas-threads 2\"\n",
           cores, load1, ws[0].endpoint, ws[1].endpoint, ws[2].endpoint);
    printf("note: %ld cores on this machine: the split's two single-threaded workers get one core each, "
           "shared with this program's ZeroMQ I/O thread and the other idle worker\n",
           cores);
    fflush(stdout);

    zctx = zmq_ctx_new();
    if (!zctx) {
        fprintf(stderr, "bench_router: zmq_ctx_new: %s\n", zmq_strerror(zmq_errno()));
        goto out;
    }

    /* 1. Overhead per request, against worker C. */
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "# bench_router: worker C alone\nbackends:\n  w:\n    type: remote\n    endpoint: %s\n"
             "    timeout_ms: 10000\n",
             ws[2].endpoint);
    if (!(routers[0] = s_router("routed.yaml", yaml, zctx))) goto out;
    /* The dead backend comes first; a long cool-down keeps its breaker open for the whole run. */
    snprintf(yaml, sizeof yaml,
             "# bench_router: a dead backend first (breaker open), then worker C\nbackends:\n"
             "  dead:\n    type: remote\n    endpoint: " DEAD_ENDPOINT
             "\n    priority: 1\n    timeout_ms: 200\n"
             "  w:\n    type: remote\n    endpoint: %s\n    priority: 2\n    timeout_ms: 10000\n"
             "router:\n  breaker_failures: 1\n  breaker_cooldown_ms: 3600000\n"
             "  breaker_max_cooldown_ms: 3600000\n",
             ws[2].endpoint);
    if (!(routers[1] = s_router("dead.yaml", yaml, zctx))) goto out;
    /* A failed probe opens the dead backend's breaker (as a failed half-open probe would). */
    int answered = titan_router_probe(routers[1]);
    titan_backend_status bs;
    if (answered != 1 || titan_router_backend_status(routers[1], 0, &bs) != 0 ||
        bs.state != TITAN_BREAKER_OPEN) {
        fprintf(stderr, "bench_router: the dead backend's breaker is not open after a probe (%d answered)\n",
                answered);
        goto out;
    }

    titan_client_opts co;
    titan_client_opts_init(&co);
    co.timeout_ms = 10000;
    co.retries = 0; /* as the router's own connections */
    co.zmq_ctx = zctx;
    if (!(client = titan_client_new(ws[2].endpoint, &co))) {
        fprintf(stderr, "bench_router: cannot make a client for %s: %s\n", ws[2].endpoint, strerror(errno));
        goto out;
    }
    if (!(o = calloc(1, sizeof *o))) goto out;
    o->client = client;
    o->routed = routers[0];
    o->dead = routers[1];
    s_fill(o->a, 256, 16);
    s_fill(o->b, 256, 17);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            double dot = 0;
            for (int k = 0; k < 16; k++)
                dot += (double)o->a[i * 16 + k] * (double)o->b[k * 16 + j];
            o->ref[i * 16 + j] = (float)dot;
        }
    if (s_bench_overhead(o, OP_PING, rounds, per_round, warmup) != 0) goto out;
    if (s_bench_overhead(o, OP_MATMUL16, rounds, per_round, warmup) != 0) goto out;
    if (titan_router_backend_status(routers[1], 0, &bs) != 0 || bs.state != TITAN_BREAKER_OPEN ||
        bs.requests) {
        fprintf(stderr, "bench_router: the dead backend was tried during the run (state %s, %llu requests)\n",
                titan_breaker_state_name(bs.state), (unsigned long long)bs.requests);
        goto out;
    }

    /* 2. Split matmul. */
    const char *tmpl = "# bench_router: %s\nbackends:\n%s";
    char one[512], two[512];
    snprintf(one, sizeof one, "  a:\n    type: remote\n    endpoint: %s\n    timeout_ms: 120000\n",
             ws[0].endpoint);
    snprintf(two, sizeof two, "  b:\n    type: remote\n    endpoint: %s\n    timeout_ms: 120000\n",
             ws[1].endpoint);
    snprintf(yaml, sizeof yaml, tmpl, "worker A alone", one);
    if (!(routers[2] = s_router("one.yaml", yaml, zctx))) goto out;
    char both[1024];
    snprintf(both, sizeof both, "%s%s", one, two);
    snprintf(yaml, sizeof yaml, tmpl, "workers A and B", both);
    if (!(routers[3] = s_router("split.yaml", yaml, zctx))) goto out;
    snprintf(two, sizeof two, "  c:\n    type: remote\n    endpoint: %s\n    timeout_ms: 120000\n",
             ws[2].endpoint);
    snprintf(yaml, sizeof yaml, tmpl, "worker C (2 BLAS threads) alone", two);
    if (!(routers[4] = s_router("two.yaml", yaml, zctx))) goto out;
    s_split_cfg scfg = {routers[2], routers[3], routers[4], settle_s};
    for (int i = 0; i < nsizes; i++)
        if (s_bench_split(&scfg, sizes[i], reps, 2) != 0) goto out;
    rc = 0;

out:
    for (int i = 0; i < NWORKERS; i++)
        if (ws[i].ready && !s_worker_alive(&ws[i])) {
            fprintf(stderr, "bench_router: worker %s died during the run (status 0x%x)\n", ws[i].label,
                    (unsigned)ws[i].status);
            s_log_tail(&ws[i]);
            rc = 1;
        }
    free(o);
    titan_client_destroy(&client);
    for (int i = 0; i < 5; i++)
        titan_router_destroy(&routers[i]);
    if (zctx) zmq_ctx_term(zctx);
    s_workers_stop(ws, NWORKERS);
    for (int i = 0; i < NWORKERS; i++) {
        if (ws[i].reaped && rc == 0 && !(WIFEXITED(ws[i].status) && WEXITSTATUS(ws[i].status) == 0)) {
            fprintf(stderr, "bench_router: worker %s ended badly on SIGTERM (status 0x%x)\n", ws[i].label,
                    (unsigned)ws[i].status);
            s_log_tail(&ws[i]);
            rc = 1;
        }
    }
    /* Show the workers' warnings, then remove the temporary files. */
    for (int i = 0; i < NWORKERS; i++) {
        struct stat ls;
        if (rc == 0 && ws[i].log[0] && stat(ws[i].log, &ls) == 0 && ls.st_size > 0) s_log_tail(&ws[i]);
    }
    if (s_remove_tmp() != 0) fprintf(stderr, "bench_router: cannot remove %s: %s\n", s_tmp, strerror(errno));
    return rc;
}
