/* cmd_basic.c - the ping, info and matmul commands of the titan CLI. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "cli.h"

/* Returns the next value of the splitmix64 stream at *state. */
static uint64_t s_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void cli_fill_random(titan_dtype dt, void *buf, size_t count, uint64_t *state)
{
    for (size_t i = 0; i < count; i++) {
        /* 53 random bits scaled to [0, 1), then mapped to [-1, 1). */
        double u = (double)(s_splitmix64(state) >> 11) * 0x1.0p-53;
        double v = 2.0 * u - 1.0;
        if (dt == TITAN_DTYPE_FLOAT32)
            ((float *)buf)[i] = (float)v;
        else
            ((double *)buf)[i] = v;
    }
}

int cli_parse_dtype(const char *cmd, const char *s, titan_dtype *dt)
{
    titan_dtype d = titan_dtype_from_name(s);
    if (d == TITAN_DTYPE_INVALID) {
        cli_usage_error(cmd, "--dtype must be float32 or float64, not \"%s\"", s);
        return -1;
    }
    *dt = d;
    return 0;
}

/* Rejects positional arguments for commands that take none. Returns CLI_EXIT_OK or CLI_EXIT_USAGE. */
static int s_only_globals(const char *cmd, cli_globals *g, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 0) return cli_unknown_option(cmd, argv[i]);
    }
    return CLI_EXIT_OK;
}

void cli_help_ping(FILE *f)
{
    fprintf(f, "usage: titan [global options] ping\n"
               "\n"
               "Sends one ping to the worker and prints its device and the round-trip time.\n"
               "\n"
               "examples:\n"
               "  titan ping\n"
               "  titan --endpoint tcp://192.168.122.10:5555 --timeout 1000 --retries 0 ping\n"
               "  titan ping --json      # {\"status\":\"ok\",\"device\":...,\"rtt_ms\":...}\n"
               "\n"
               "exit status: 0 the worker answered, 1 it answered an error, 3 no answer.\n");
}

int cli_cmd_ping(cli_globals *g, int argc, char **argv)
{
    titan_client *c = NULL;
    char *device = NULL;
    int rc = s_only_globals("ping", g, argc, argv);
    if (rc != CLI_EXIT_OK || (rc = cli_client_new(g, &c)) != CLI_EXIT_OK) return rc;
    double t0 = titan_clock_mono_s();
    int err = titan_client_ping(c, &device);
    double ms = (titan_clock_mono_s() - t0) * 1e3;
    if (err) {
        rc = cli_report_failure(g, c, err, "ping");
    } else if (g->json) {
        rc = cli_print_json(json_pack("{s:s, s:s, s:s, s:f, s:i}", "status", "ok", "endpoint", g->endpoint,
                                      "device", device, "rtt_ms", ms, "retries",
                                      titan_client_last_retries(c)));
    } else {
        printf("pong from %s at %s: %.3f ms", device, g->endpoint, ms);
        if (titan_client_last_retries(c)) printf(" (after %d retries)", titan_client_last_retries(c));
        printf("\n");
    }
    free(device);
    titan_client_destroy(&c);
    return rc;
}

/* Prints a string member of the gpu_info reply, if the worker sent one that is not null. */
static void s_print_str(json_t *o, const char *key, const char *label)
{
    const char *v = json_string_value(json_object_get(o, key));
    if (v) printf("%-18s %s\n", label, v);
}

/* The live and CUDA members of gpu_info (PROTOCOL.md 5.2) that the worker knows: unknown ones are null
 * there and left out here. */
static void s_print_live(const char *raw)
{
    json_t *o = json_loads(raw, 0, NULL);
    if (!o) return;
    s_print_str(o, "driver_version", "driver");
    s_print_str(o, "runtime_version", "cuda runtime");
    s_print_str(o, "pci_bus_id", "pci bus id");
    json_t *used = json_object_get(o, "memory_used_gb"), *fr = json_object_get(o, "memory_free_gb");
    if (json_is_number(used) && json_is_number(fr))
        printf("%-18s %.2f GB used, %.2f GB free\n", "memory", json_number_value(used), json_number_value(fr));
    json_t *v = json_object_get(o, "utilization");
    if (json_is_number(v)) printf("%-18s %.0f %%\n", "utilization", 100 * json_number_value(v));
    if (json_is_number(v = json_object_get(o, "temperature_c")))
        printf("%-18s %.0f C\n", "temperature", json_number_value(v));
    if (json_is_number(v = json_object_get(o, "power_w"))) printf("%-18s %.1f W\n", "power", json_number_value(v));
    json_t *sm = json_object_get(o, "sm_clock_mhz"), *mem = json_object_get(o, "mem_clock_mhz");
    if (json_is_number(sm) && json_is_number(mem))
        printf("%-18s %.0f MHz sm, %.0f MHz memory\n", "clocks", json_number_value(sm), json_number_value(mem));
    json_t *res = json_object_get(o, "resident");
    if (json_is_object(res))
        printf("%-18s %lld tensors, %.1f of %.1f MB\n", "resident tensors",
               (long long)json_integer_value(json_object_get(res, "tensors")),
               (double)json_integer_value(json_object_get(res, "bytes")) / 1048576.0,
               (double)json_integer_value(json_object_get(res, "worker_bytes_limit")) / 1048576.0);
    if (json_is_false(json_object_get(o, "ready")))
        printf("%-18s NOT READY: %s\n", "state", json_string_value(json_object_get(o, "device_state"))
                                                     ? json_string_value(json_object_get(o, "device_state"))
                                                     : "(no reason given)");
    json_decref(o);
}

void cli_help_info(FILE *f)
{
    fprintf(f, "usage: titan [global options] info\n"
               "\n"
               "Shows the worker's device: name, backend (cpu or cuda), memory, multiprocessors\n"
               "(CPU cores on the cpu backend) and CUDA capability; then what the worker knows now:\n"
               "driver and CUDA runtime, memory in use, utilization, temperature, power, clocks,\n"
               "resident tensors, and NOT READY when the GPU's context is lost. Figures the worker\n"
               "cannot read are left out. With --json, prints the worker's gpu_info reply as is.\n"
               "\n"
               "examples:\n"
               "  titan info\n"
               "  titan info --json | jq .total_memory_gb\n");
}

int cli_cmd_info(cli_globals *g, int argc, char **argv)
{
    titan_client *c = NULL;
    titan_gpu_info gi;
    char *raw = NULL;
    int rc = s_only_globals("info", g, argc, argv);
    if (rc != CLI_EXIT_OK || (rc = cli_client_new(g, &c)) != CLI_EXIT_OK) return rc;
    int err = titan_client_gpu_info(c, &gi, &raw);
    if (err) {
        rc = cli_report_failure(g, c, err, "gpu_info request");
    } else if (g->json) {
        json_error_t jerr;
        rc = cli_print_json(json_loads(raw, 0, &jerr));
    } else {
        bool cpu = strcmp(gi.backend, "cpu") == 0;
        printf("%-18s %s\n", "device", gi.name);
        printf("%-18s %s\n", "backend", *gi.backend ? gi.backend : "(not reported)");
        printf("%-18s %.1f GB\n", "total memory", gi.total_memory_gb);
        printf("%-18s %d\n", cpu ? "cores" : "multiprocessors", gi.multi_processor_count);
        printf("%-18s %s\n", "cuda capability", *gi.cuda_capability ? gi.cuda_capability : "-");
        s_print_live(raw);
        printf("%-18s %s\n", "endpoint", g->endpoint);
    }
    free(raw);
    titan_client_destroy(&c);
    return rc;
}

void cli_help_matmul(FILE *f)
{
    fprintf(f,
            "usage: titan [global options] matmul --m M --k K --n N [--dtype float32|float64]\n"
            "                                     [--seed S] [--check] [--split]\n"
            "\n"
            "Multiplies a random M x K matrix by a random K x N matrix (values uniform in [-1, 1))\n"
            "on the worker, sent as binary frames, and prints the round-trip time and GFLOP/s\n"
            "(2*M*N*K floating-point operations; the time includes the transfers).\n"
            "\n"
            "options:\n"
            "  --m M, --k K, --n N   matrix sizes, 1 to %d each (required)\n"
            "  --dtype D             float32 (default) or float64\n"
            "  --seed S              seed of the random inputs (default 1), for reproducible runs\n"
            "  --check               also compute the product locally with OpenBLAS and compare:\n"
            "                        prints the largest absolute error and the relative error\n"
            "                        (largest absolute error / largest |C| entry); fails with exit\n"
            "                        status 1 when the relative error exceeds 8*sqrt(K)*epsilon\n"
            "                        (epsilon = 2^-23 for float32, 2^-52 for float64)\n"
            "  --split               with --backends FILE: divide the rows of A among the healthy\n"
            "                        backends in proportion to their measured throughput, compute\n"
            "                        the parts at once, and assemble the result\n"
            "\n"
            "With --backends FILE (compute_backends.yaml) the product goes to the first healthy\n"
            "backend with room instead of --endpoint; see `titan help backends`.\n"
            "\n"
            "examples:\n"
            "  titan matmul --m 512 --k 512 --n 512\n"
            "  titan matmul --m 1000 --k 300 --n 20 --dtype float64 --check\n"
            "  titan --timeout 60000 matmul --m 8192 --k 8192 --n 8192 --json\n"
            "  titan --backends compute_backends.yaml matmul --m 4096 --k 4096 --n 4096 --split --check\n",
            CLI_MAX_DIM);
}

/* Compares the worker's product `got` with OpenBLAS's for a (m x k) * b (k x n).
 * Returns 0 with the largest absolute and relative errors, or -ENOMEM. */
/* Whether a backend's capability list (comma-separated; "" = any) offers `cap`. */
static bool s_offers(const char *caps, const char *cap)
{
    if (!caps[0]) return true;
    size_t n = strlen(cap);
    for (const char *p = caps; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && *p == ' ') p++, len--;
        if (len == n && strncmp(p, cap, n) == 0) return true;
        if (!e) break;
        p = e + 1;
    }
    return false;
}

/* Why a split ran on one backend (`used`): each other backend that offers matrix_ops, its breaker's
 * state and its last error. Empty when there is none. */
static void s_split_note(titan_router *router, int used, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    size_t count = titan_router_backend_count(router);
    for (size_t i = 0; i < count && len < cap; i++) {
        titan_backend_status st;
        if ((int)i == used || titan_router_backend_status(router, i, &st) != 0) continue;
        if (!s_offers(st.capabilities, "matrix_ops")) continue;
        const char *state = st.state == TITAN_BREAKER_CLOSED ? "is up but took no rows"
                            : st.state == TITAN_BREAKER_OPEN ? "is down (breaker open)"
                                                             : "is down (breaker half-open, to be probed)";
        len += (size_t)snprintf(buf + len, cap - len, "%s%s %s%s%s", len ? "; " : "", st.name, state,
                                st.last_error[0] ? ": " : "", st.last_error);
    }
    if (!buf[0]) snprintf(buf, cap, "no other backend offers matrix_ops");
}

static int s_check_product(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b,
                           const void *got, double *max_abs, double *max_rel)
{
    size_t esize = titan_dtype_size(dt);
    void *ref = malloc(m * n * esize);
    if (!ref) return -ENOMEM;
    if (dt == TITAN_DTYPE_FLOAT32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, 1.0f, a,
                    (blasint)k, b, (blasint)n, 0.0f, ref, (blasint)n);
    else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, 1.0, a,
                    (blasint)k, b, (blasint)n, 0.0, ref, (blasint)n);
    *max_rel = titan_matmul_rel_error(dt, m * n, got, ref, max_abs);
    free(ref);
    return 0;
}

/* Returns `v` as a JSON real, or null when it is NaN or infinite (JSON has no such numbers). */
static json_t *s_json_number(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

int cli_cmd_matmul(cli_globals *g, int argc, char **argv)
{
    const char *cmd = "matmul";
    uint64_t dims[3] = {0, 0, 0};
    const char *dim_names[3] = {"--m", "--k", "--n"};
    uint64_t seed = 1;
    titan_dtype dt = TITAN_DTYPE_FLOAT32;
    bool check = false, split = false;

    for (int i = 0; i < argc; i++) {
        const char *v = NULL;
        int r = cli_global_option(cmd, g, argc, argv, &i);
        if (r < 0) return CLI_EXIT_USAGE;
        if (r > 0) continue;
        if (strcmp(argv[i], "--check") == 0) {
            check = true;
            continue;
        }
        if (strcmp(argv[i], "--split") == 0) {
            split = true;
            continue;
        }
        for (int d = 0; d < 3 && r == 0; d++) {
            r = cli_match_option(cmd, argc, argv, &i, dim_names[d], &v);
            if (r > 0 && cli_parse_u64(cmd, dim_names[d], v, 1, CLI_MAX_DIM, &dims[d]) < 0) r = -1;
        }
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--dtype", &v)) > 0 &&
            cli_parse_dtype(cmd, v, &dt) < 0)
            r = -1;
        if (r == 0 && (r = cli_match_option(cmd, argc, argv, &i, "--seed", &v)) > 0 &&
            cli_parse_u64(cmd, "--seed", v, 0, UINT64_MAX, &seed) < 0)
            r = -1;
        if (r < 0) return CLI_EXIT_USAGE;
        if (r == 0) return cli_unknown_option(cmd, argv[i]);
    }
    if (!dims[0] || !dims[1] || !dims[2])
        return cli_usage_error(cmd,
                               "--m, --k and --n are required, e.g. titan matmul --m 512 --k 512 --n 512");
    if (split && !g->backends)
        return cli_usage_error(cmd, "--split divides the rows among several backends: give them with "
                                    "--backends FILE (compute_backends.yaml)");

    size_t m = dims[0], k = dims[1], n = dims[2], esize = titan_dtype_size(dt);
    titan_client *c = NULL;
    titan_router *router = NULL;
    titan_route_info ri;
    memset(&ri, 0, sizeof(ri));
    json_t *route = NULL;
    void *a = malloc(m * k * esize), *b = malloc(k * n * esize), *out = NULL;
    int rc = CLI_EXIT_OK;
    if (!a || !b) {
        fprintf(stderr, "titan matmul: cannot allocate %.1f MiB for the inputs; use smaller --m/--k/--n\n",
                (double)(m * k + k * n) * (double)esize / 1048576.0);
        rc = CLI_EXIT_REMOTE;
        goto out;
    }
    uint64_t state = seed;
    cli_fill_random(dt, a, m * k, &state);
    cli_fill_random(dt, b, k * n, &state);
    if ((rc = g->backends ? cli_router_new(g, &router) : cli_client_new(g, &c)) != CLI_EXIT_OK) goto out;

    double t0 = titan_clock_mono_s();
    int err = router ? split ? titan_router_matmul_split(router, dt, m, k, n, a, b, &out, &ri)
                             : titan_router_matmul(router, dt, m, k, n, a, b, &out, &ri)
                     : titan_client_matmul(c, dt, m, k, n, a, b, &out);
    double secs = titan_clock_mono_s() - t0;
    if (err) {
        rc = router ? cli_report_route_failure(g, err, &ri, "matrix_multiply request")
                    : cli_report_failure(g, c, err, "matrix_multiply request");
        goto out;
    }
    /* Where it ran: the endpoint, the backend the router chose, or the split's parts. */
    char where[512];
    snprintf(where, sizeof(where), "%s", g->endpoint);
    char split_note[1024] = "";
    if (router && split && ri.nparts <= 1)
        s_split_note(router, ri.nparts == 1 ? ri.part[0].backend : ri.backend, split_note, sizeof(split_note));
    if (router && split) {
        route = json_array();
        size_t len = (size_t)snprintf(where, sizeof(where), "split over");
        for (int p = 0; p < ri.nparts; p++) {
            titan_backend_status st;
            if (titan_router_backend_status(router, (size_t)ri.part[p].backend, &st) != 0) continue;
            json_array_append_new(route, json_pack("{s:s, s:I}", "backend", st.name, "rows",
                                                   (json_int_t)ri.part[p].rows));
            if (len < sizeof(where))
                len += (size_t)snprintf(where + len, sizeof(where) - len, "%s %s (%zu rows)", p ? "," : "",
                                        st.name, ri.part[p].rows);
        }
    } else if (router) {
        titan_backend_status st;
        if (titan_router_backend_status(router, (size_t)ri.backend, &st) == 0) {
            snprintf(where, sizeof(where), "backend %s (%s)", st.name,
                     st.type == TITAN_ROUTE_LOCAL ? "local" : st.endpoint);
            route = json_string(st.name);
        }
    }
    double gflops = 2.0 * (double)m * (double)n * (double)k / secs * 1e-9;
    double max_abs = 0, max_rel = 0, tol = titan_matmul_tolerance(dt, k);
    bool ok = true;
    if (check) {
        if (s_check_product(dt, m, k, n, a, b, out, &max_abs, &max_rel) < 0) {
            fprintf(stderr,
                    "titan matmul: cannot allocate the local result for --check; use smaller sizes\n");
            rc = CLI_EXIT_REMOTE;
            goto out;
        }
        ok = max_rel <= tol; /* false for NaN too */
    }

    if (g->json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:f, s:f, s:i}", "op", "matrix_multiply",
                              "endpoint", router ? "" : g->endpoint, "dtype", titan_dtype_name(dt), "m",
                              (json_int_t)m, "k", (json_int_t)k, "n", (json_int_t)n, "seed", (json_int_t)seed,
                              "time_ms", secs * 1e3, "gflops", gflops, "retries",
                              c ? titan_client_last_retries(c) : 0);
        if (o && router) {
            json_object_del(o, "endpoint");
            json_object_set_new(o, split ? "split" : "backend", route ? route : json_null());
            route = NULL;
            json_object_set_new(o, "tried", json_integer(ri.tried));
            if (split_note[0]) json_object_set_new(o, "split_note", json_string(split_note));
        }
        if (o && check)
            json_object_set_new(o, "check",
                                json_pack("{s:o, s:o, s:f, s:b}", "max_abs_error", s_json_number(max_abs),
                                          "max_rel_error", s_json_number(max_rel), "tolerance", tol, "ok",
                                          ok));
        rc = cli_print_json(o);
    } else {
        printf("matmul %zux%zu * %zux%zu %s on %s: %.3f ms, %.3g GFLOP/s (round trip, transfers included)\n",
               m, k, k, n, titan_dtype_name(dt), where, secs * 1e3, gflops);
        if (split_note[0]) printf("the split ran on one backend: %s\n", split_note);
        if (check)
            printf("check against OpenBLAS: max abs error %.3g, relative error %.3g (tolerance %.3g): %s\n",
                   max_abs, max_rel, tol, ok ? "ok" : "FAILED");
    }
    if (!ok) {
        fprintf(
            stderr,
            "titan matmul: the worker's result differs from OpenBLAS's by a relative error of %.3g, above "
            "the tolerance %.3g; the worker's backend may be faulty: check its log and `titan info`\n",
            max_rel, tol);
        rc = CLI_EXIT_REMOTE;
    }
out:
    json_decref(route);
    free(a);
    free(b);
    free(out);
    titan_client_destroy(&c);
    titan_router_destroy(&router);
    return rc;
}
