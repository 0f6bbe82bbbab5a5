/* cmd_bench.c - the bench command of the titan CLI: ping latency and matmul throughput. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define S_MAX_SIZES 32
#define S_MAX_BENCH_DIM 65536
#define S_MAX_PINGS 1000000
#define S_MAX_REPS 100000

typedef struct {
    double median, p99, min, max, mean;
} s_stats;

void cli_help_bench(FILE *f)
{
    fprintf(f,
            "usage: titan [global options] bench [--pings N] [--sizes S1,S2,...] [--reps R]\n"
            "                                    [--dtype float32|float64]\n"
            "\n"
            "Measures the worker: N ping round trips (median, p99, min, max), then for each size S\n"
            "one warm-up and R timed S x S x S matrix multiplications with random inputs, sent as\n"
            "binary frames. Times are round trips, transfers included; GFLOP/s counts 2*S^3 operations.\n"
            "\n"
            "options:\n"
            "  --pings N     ping round trips to time, 1 to %d (default 200)\n"
            "  --sizes LIST  comma-separated square matrix sizes, 1 to %d, at most %d of them\n"
            "                (default 256,512,1024)\n"
            "  --reps R      timed multiplications per size, 1 to %d (default 5)\n"
            "  --dtype D     float32 (default) or float64\n"
            "\n"
            "examples:\n"
            "  titan bench\n"
            "  titan bench --pings 1000 --sizes 128,2048 --reps 10 --dtype float64\n"
            "  titan --timeout 60000 bench --sizes 4096 --json > bench.json\n",
            S_MAX_PINGS, S_MAX_BENCH_DIM, S_MAX_SIZES, S_MAX_REPS);
}

/* Orders doubles ascending, for qsort. */
static int s_cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Sorts `v[0..n)` (n >= 1) in place and returns its median, nearest-rank p99, min, max and mean. */
static s_stats s_stats_of(double *v, size_t n)
{
    s_stats s;
    double sum = 0;
    qsort(v, n, sizeof *v, s_cmp_double);
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    size_t rank = (size_t)((99 * n + 99) / 100); /* ceil(0.99 n), 1-based */
    s.p99 = v[rank - 1];
    s.min = v[0];
    s.max = v[n - 1];
    s.mean = sum / (double)n;
    return s;
}

/* Parses the --sizes list `s` into sizes[0..*count). Returns 0, or prints a usage error and returns -1. */
static int s_parse_sizes(const char *s, uint64_t *sizes, size_t *count)
{
    size_t n = 0;
    char item[32];
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (n == S_MAX_SIZES) {
            cli_usage_error("bench", "--sizes takes at most %d sizes", S_MAX_SIZES);
            return -1;
        }
        if (len == 0 || len >= sizeof item) {
            cli_usage_error("bench", "--sizes expects a list like 256,512,1024, not \"%s\"", s);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        if (cli_parse_u64("bench", "--sizes", item, 1, S_MAX_BENCH_DIM, &sizes[n]) < 0) return -1;
        n++;
        if (!comma) break;
        p = comma + 1;
    }
    *count = n;
    return 0;
}

/* Times `reps` S x S x S products after one warm-up, into times[0..reps) in seconds.
 * Returns 0, a negative errno from the client, or -ENOMEM. */
static int s_bench_matmul(titan_client *c, titan_dtype dt, size_t s, size_t reps, double *times)
{
    size_t esize = titan_dtype_size(dt);
    void *a = malloc(s * s * esize), *b = malloc(s * s * esize), *out = malloc(s * s * esize);
    int rc = -ENOMEM;
    if (!a || !b || !out) goto out;
    uint64_t state = s;
    cli_fill_random(dt, a, s * s, &state);
    cli_fill_random(dt, b, s * s, &state);
    rc = titan_client_matmul(c, dt, s, s, s, a, b, &out);
    for (size_t i = 0; rc == 0 && i < reps; i++) {
        double t0 = titan_clock_mono_s();
        rc = titan_client_matmul(c, dt, s, s, s, a, b, &out);
        times[i] = titan_clock_mono_s() - t0;
    }
out:
    free(a);
    free(b);
    free(out);
    return rc;
}

/* Returns 2*s^3 / t in GFLOP/s. */
static double s_gflops(size_t s, double secs)
{
    return 2.0 * (double)s * (double)s * (double)s / secs * 1e-9;
}

int cli_cmd_bench(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "bench";
    uint64_t pings = 200, reps = 5, sizes[S_MAX_SIZES] = {256, 512, 1024};
    size_t nsizes = 3;
    titan_dtype dt = TITAN_DTYPE_FLOAT32;

    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if ((r = cli_match_option(cmd, argc, argv, &i, "--pings", &v)) > 0)
            r = cli_parse_u64(cmd, "--pings", v, 1, S_MAX_PINGS, &pings) < 0 ? -1 : 1;
        else if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--reps", &v)) > 0)
            r = cli_parse_u64(cmd, "--reps", v, 1, S_MAX_REPS, &reps) < 0 ? -1 : 1;
        else if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--sizes", &v)) > 0)
            r = s_parse_sizes(v, sizes, &nsizes) < 0 ? -1 : 1;
        else if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--dtype", &v)) > 0)
            r = cli_parse_dtype(cmd, v, &dt) < 0 ? -1 : 1;
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 0) return cli_unknown_option(cmd, argv[i]);
    }

    titan_client *c = NULL;
    titan_gpu_info gi;
    double *times = malloc((pings > reps ? pings : reps) * sizeof *times);
    json_t *jsizes = json_array();
    int rc = CLI_EXIT_REMOTE, err;
    if (!times || !jsizes) {
        fprintf(stderr, "titan bench: out of memory; use a smaller --pings or --reps\n");
        goto out;
    }
    if ((rc = cli_client_new(g, &c)) != CLI_EXIT_OK) goto out;
    if ((err = titan_client_gpu_info(c, &gi, NULL)) != 0) {
        rc = cli_report_failure(g, c, err, "gpu_info request");
        goto out;
    }

    for (size_t i = 0; i < pings; i++) {
        double t0 = titan_clock_mono_s();
        if ((err = titan_client_ping(c, NULL)) != 0) {
            rc = cli_report_failure(g, c, err, "ping");
            goto out;
        }
        times[i] = (titan_clock_mono_s() - t0) * 1e3;
    }
    s_stats ps = s_stats_of(times, pings);
    if (!g->json) {
        printf("titan bench against %s: %s (%s backend)\n\n", g->endpoint, gi.name,
               *gi.backend ? gi.backend : "unknown");
        printf("ping: %zu round trips   median %.3f ms   p99 %.3f ms   min %.3f ms   max %.3f ms\n\n",
               (size_t)pings, ps.median, ps.p99, ps.min, ps.max);
        printf("matmul %s, S x S x S, %zu timed reps after 1 warm-up (round trips, transfers included)\n",
               titan_dtype_name(dt), (size_t)reps);
        printf("%8s  %12s  %12s  %16s  %14s\n", "size", "median ms", "best ms", "GFLOP/s median",
               "GFLOP/s best");
        fflush(stdout);
    }

    for (size_t i = 0; i < nsizes; i++) {
        size_t s = sizes[i];
        err = s_bench_matmul(c, dt, s, reps, times);
        if (err == -ENOMEM) {
            fprintf(stderr, "titan bench: cannot allocate the %zu x %zu matrices; use smaller --sizes\n", s,
                    s);
            rc = CLI_EXIT_REMOTE;
            goto out;
        }
        if (err) {
            rc = cli_report_failure(g, c, err, "matrix_multiply request");
            goto out;
        }
        s_stats ms = s_stats_of(times, reps);
        if (g->json) {
            json_array_append_new(jsizes,
                                  json_pack("{s:I, s:I, s:f, s:f, s:f, s:f}", "size", (json_int_t)s, "reps",
                                            (json_int_t)reps, "median_ms", ms.median * 1e3, "best_ms",
                                            ms.min * 1e3, "gflops_median", s_gflops(s, ms.median),
                                            "gflops_best", s_gflops(s, ms.min)));
        } else {
            printf("%8zu  %12.3f  %12.3f  %16.3g  %14.3g\n", s, ms.median * 1e3, ms.min * 1e3,
                   s_gflops(s, ms.median), s_gflops(s, ms.min));
            fflush(stdout);
        }
    }

    rc = CLI_EXIT_OK;
    if (g->json) {
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:{s:I, s:f, s:f, s:f, s:f, s:f}, s:s, s:O}", "endpoint", g->endpoint,
                      "device", gi.name, "backend", gi.backend, "ping", "count", (json_int_t)pings,
                      "median_ms", ps.median, "p99_ms", ps.p99, "min_ms", ps.min, "max_ms", ps.max, "mean_ms",
                      ps.mean, "dtype", titan_dtype_name(dt), "matmul", jsizes);
        rc = cli_print_json(o);
    }
out:
    json_decref(jsizes);
    free(times);
    titan_client_destroy(&c);
    return rc;
}
