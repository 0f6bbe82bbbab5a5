/* bench_matmul.c - float32 matmul end to end through titan (binary frames) against in-process OpenBLAS sgemm.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#include <zmq.h>

#include "titan/titan.h"

#include "benchutil.h"

#define MAX_SIZES 16

static double s_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, bench_cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Uniform in [-1, 1) from a fixed-seed xorshift, so every run multiplies the same matrices. */
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

static void s_sgemm(int n, const float *a, const float *b, float *c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
}

/* How many timed reps fit in `budget_s`, given one rep's cost, within [lo, hi]. */
static int s_reps_for(double one_s, double budget_s, int lo, int hi)
{
    double r = one_s > 0 ? budget_s / one_s : hi;
    return r < lo ? lo : r > hi ? hi : (int)r;
}

typedef struct {
    const char *endpoint;
    const char *echo_endpoint; /* optional bench/echo_server, for the transport floor */
    int sizes[MAX_SIZES];
    int nsizes;
    int min_reps, max_reps;
    double budget_s; /* per size and side, for choosing the rep count */
    int timeout_ms;
    double settle_s;
} s_config;

/* One round trip through the bare echo server carrying the bytes a titan matmul moves
 * (3 n^2 floats: 1.5 n^2 each way instead of 2 n^2 in and n^2 out). Returns seconds, or -1. */
static double s_echo_once(void *sock, const float *a, const float *b, size_t count)
{
    double t0 = bench_now();
    if (zmq_send(sock, "", 0, ZMQ_SNDMORE) < 0 || zmq_send(sock, "{}", 2, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, a, count * sizeof *a, ZMQ_SNDMORE) < 0 ||
        zmq_send(sock, b, count / 2 * sizeof *b, 0) < 0)
        return -1;
    int frames = 0;
    zmq_msg_t m;
    zmq_msg_init(&m);
    do {
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return -1;
        }
        frames++;
    } while (zmq_msg_more(&m));
    zmq_msg_close(&m);
    return frames == 4 ? bench_now() - t0 : -1;
}

/* Median of the echo round trips for size n; -1 when the echo server failed. */
static double s_bench_echo(void *sock, const s_config *cfg, const float *a, const float *b, size_t count,
                           double *t)
{
    double one = s_echo_once(sock, a, b, count);
    if (one < 0) return -1;
    int reps = s_reps_for(one, cfg->budget_s, cfg->min_reps, cfg->max_reps);
    for (int i = 0; i < reps; i++)
        if ((t[i] = s_echo_once(sock, a, b, count)) < 0) return -1;
    return s_median(t, reps);
}

/* Times one size. Returns 0, or 1 when titan failed or answered a wrong product. */
static int s_bench_size(titan_client *client, void *echo, const s_config *cfg, int n)
{
    int rc = 1;
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b);
    float *ref = malloc(count * sizeof *ref), *got = malloc(count * sizeof *got);
    double *t = malloc((size_t)cfg->max_reps * sizeof *t);
    if (!a || !b || !ref || !got || !t) {
        fprintf(stderr, "bench_matmul: out of memory for n=%d\n", n);
        goto out;
    }
    s_fill(a, count, 1000u + (unsigned)n);
    s_fill(b, count, 2000u + (unsigned)n);

    /* In-process sgemm: one untimed call warms the caches and OpenBLAS's threads. */
    double t0 = bench_now();
    s_sgemm(n, a, b, ref);
    int reps = s_reps_for(bench_now() - t0, cfg->budget_s, cfg->min_reps, cfg->max_reps);
    s_sgemm(n, a, b, ref);
    for (int i = 0; i < reps; i++) {
        t0 = bench_now();
        s_sgemm(n, a, b, ref);
        t[i] = bench_now() - t0;
    }
    double sgemm_s = s_median(t, reps);
    int sgemm_reps = reps;

    /* Let this process's BLAS threads stop spinning before the worker computes. */
    usleep((useconds_t)(cfg->settle_s * 1e6));

    double echo_s = 0;
    if (echo && (echo_s = s_bench_echo(echo, cfg, a, b, count, t)) < 0) {
        fprintf(stderr, "bench_matmul: n=%d: the echo server did not answer: %s\n", n,
                zmq_strerror(zmq_errno()));
        goto out;
    }

    void *out = got;
    t0 = bench_now();
    int err = titan_client_matmul(client, TITAN_DTYPE_FLOAT32, (size_t)n, (size_t)n, (size_t)n, a, b, &out);
    if (err < 0) {
        fprintf(stderr, "bench_matmul: n=%d: titan_client_matmul failed: %s (%s: %s)\n", n, strerror(-err),
                titan_client_last_code(client), titan_client_last_error(client));
        goto out;
    }
    reps = s_reps_for(bench_now() - t0, cfg->budget_s, cfg->min_reps, cfg->max_reps);
    for (int i = 0; i < reps; i++) {
        t0 = bench_now();
        err = titan_client_matmul(client, TITAN_DTYPE_FLOAT32, (size_t)n, (size_t)n, (size_t)n, a, b, &out);
        t[i] = bench_now() - t0;
        if (err < 0) {
            fprintf(stderr, "bench_matmul: n=%d: titan_client_matmul failed: %s (%s: %s)\n", n,
                    strerror(-err), titan_client_last_code(client), titan_client_last_error(client));
            goto out;
        }
    }
    double titan_s = s_median(t, reps);
    usleep((useconds_t)(cfg->settle_s * 1e6)); /* and the worker's, before the next sgemm */

    /* The worker may split the work across threads differently, so compare with
     * a tolerance scaled to the dot-product length (entries are ~sqrt(n/3)). */
    double maxdiff = 0, tol = 1e-5 * n + 1e-4;
    for (size_t i = 0; i < count; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= maxdiff)) /* NaN lands here too */
            maxdiff = isnan(d) ? INFINITY : d;
    }
    bool ok = maxdiff <= tol;
    double flops = 2.0 * n * (double)n * n;
    printf("matmul n=%d sgemm_s=%.6g titan_s=%.6g ratio=%.3f sgemm_gflops=%.1f titan_gflops=%.1f "
           "sgemm_reps=%d titan_reps=%d bytes_out=%zu bytes_back=%zu echo_same_bytes_s=%.6g overhead_s=%.6g "
           "maxdiff=%.3g check=%s\n",
           n, sgemm_s, titan_s, titan_s / sgemm_s, flops / sgemm_s * 1e-9, flops / titan_s * 1e-9, sgemm_reps,
           reps, 2 * count * sizeof(float), count * sizeof(float), echo ? echo_s : NAN, titan_s - sgemm_s,
           maxdiff, ok ? "ok" : "WRONG");
    fflush(stdout);
    if (ok)
        rc = 0;
    else
        fprintf(stderr, "bench_matmul: n=%d: titan's product differs from sgemm by %.3g (tolerance %.3g)\n",
                n, maxdiff, tol);
out:
    free(a);
    free(b);
    free(ref);
    free(got);
    free(t);
    return rc;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: bench_matmul [options] ENDPOINT\n"
               "  --sizes LIST       square sizes n (default 256,512,1024,2048)\n"
               "  --min-reps N       fewest timed reps per side (default 5)\n"
               "  --max-reps N       most timed reps per side (default 50)\n"
               "  --budget S         seconds of timed reps to aim for per size and side (default 1.5)\n"
               "  --timeout-ms N     per-call timeout for titan (default 120000)\n"
               "  --settle S         pause between the in-process and the titan runs (default 0.3)\n"
               "  --echo ENDPOINT    also time a bare ZeroMQ round trip through bench/echo_server that\n"
               "                     moves as many bytes as the matmul (the transport floor)\n"
               "Prints one 'matmul n=... sgemm_s=... titan_s=... ratio=...' line per size.\n"
               "OpenBLAS runs with its default thread count (OPENBLAS_NUM_THREADS or the cores).\n");
}

static bool s_parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    s_config cfg = {.sizes = {256, 512, 1024, 2048},
                    .nsizes = 4,
                    .min_reps = 5,
                    .max_reps = 50,
                    .budget_s = 1.5,
                    .timeout_ms = 120000,
                    .settle_s = 0.3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = v != NULL;
        long l = 0;
        if (!strcmp(a, "--sizes") && v)
            ok = bench_parse_sizes(v, 1, 16384, cfg.sizes, MAX_SIZES, &cfg.nsizes);
        else if (!strcmp(a, "--min-reps") && v)
            ok = bench_parse_long(v, 1, 100000, &l), cfg.min_reps = (int)l;
        else if (!strcmp(a, "--max-reps") && v)
            ok = bench_parse_long(v, 1, 100000, &l), cfg.max_reps = (int)l;
        else if (!strcmp(a, "--timeout-ms") && v)
            ok = bench_parse_long(v, 1, 3600000, &l), cfg.timeout_ms = (int)l;
        else if (!strcmp(a, "--budget") && v)
            ok = s_parse_double(v, 0, 3600, &cfg.budget_s);
        else if (!strcmp(a, "--settle") && v)
            ok = s_parse_double(v, 0, 60, &cfg.settle_s);
        else if (!strcmp(a, "--echo") && v)
            cfg.echo_endpoint = v;
        else {
            takes = false;
            if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                s_usage(stdout);
                return 0;
            } else if (a[0] != '-' && !cfg.endpoint)
                cfg.endpoint = a;
            else
                ok = false;
        }
        if (!ok) {
            fprintf(stderr, "bench_matmul: bad argument: %s%s%s\n", a, takes ? " " : "", takes ? v : "");
            s_usage(stderr);
            return 2;
        }
        if (takes) i++;
    }
    if (!cfg.endpoint || cfg.min_reps > cfg.max_reps) {
        s_usage(stderr);
        return 2;
    }

    titan_client_opts opts;
    titan_client_opts_init(&opts);
    opts.timeout_ms = cfg.timeout_ms;
    opts.retries = 0; /* a retry would hide a slow call inside a single timing */
    titan_client *client = titan_client_new(cfg.endpoint, &opts);
    if (!client) {
        fprintf(stderr, "bench_matmul: cannot make a client for %s: %s\n", cfg.endpoint, strerror(errno));
        return 1;
    }
    char *device = NULL;
    int err = titan_client_ping(client, &device);
    if (err < 0) {
        fprintf(stderr, "bench_matmul: no answer to ping from %s: %s\n", cfg.endpoint, strerror(-err));
        titan_client_destroy(&client);
        return 1;
    }
    printf("matmul_setup endpoint=%s worker_device=\"%s\" openblas_threads=%d openblas_core=%s\n",
           cfg.endpoint, device ? device : "", openblas_get_num_threads(), openblas_get_corename());
    free(device);

    int rc = 0;
    void *zctx = NULL, *echo = NULL;
    if (cfg.echo_endpoint) {
        int linger = 0;
        zctx = zmq_ctx_new();
        echo = zctx ? zmq_socket(zctx, ZMQ_DEALER) : NULL;
        if (echo) {
            zmq_setsockopt(echo, ZMQ_LINGER, &linger, sizeof linger);
            zmq_setsockopt(echo, ZMQ_RCVTIMEO, &cfg.timeout_ms, sizeof cfg.timeout_ms);
        }
        if (!echo || zmq_connect(echo, cfg.echo_endpoint) != 0) {
            fprintf(stderr, "bench_matmul: cannot connect to %s: %s\n", cfg.echo_endpoint,
                    zmq_strerror(zmq_errno()));
            rc = 1;
        }
    }
    for (int i = 0; i < cfg.nsizes && rc == 0; i++)
        rc = s_bench_size(client, echo, &cfg, cfg.sizes[i]);
    if (echo) zmq_close(echo);
    if (zctx) zmq_ctx_term(zctx);
    titan_client_destroy(&client);
    return rc;
}
