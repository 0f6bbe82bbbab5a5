/* cuda_check.c - the CUDA backend on a real GPU against the CPU: starts titan-worker --device cuda and
 * compares its products (float32 and float64, shapes from 1x1x1 to 4096^3, row blocks with remainders,
 * JSON and binary forms, resident operands) with OpenBLAS, checks gpu_info's device fields, and that the
 * pool makes no device allocation in steady state. Prints TAP. Without a GPU (or without the CUDA module)
 * it prints "1..0 # SKIP why": reported as skipped, never as passed. Plain C over libtitan, so that it runs
 * from the device kit (scripts/device-kit.sh) on a machine without Debian's Python packages.
 * Usage: cuda_check PATH-TO-TITAN-WORKER [--big N]   (--big: the largest square product, default 4096) */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#include <jansson.h>

#include "titan/titan.h"

static int g_n, g_failed;
static pid_t g_pid;
static char g_dir[256], g_ep[256];

static void s_ok(bool cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_ok(bool cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%sok %d - ", cond ? "" : "not ", ++g_n);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!cond) g_failed++;
}

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The last line of the worker's log, for a skip or a failure. */
static void s_log_tail(char *buf, size_t cap)
{
    char path[300];
    snprintf(path, sizeof path, "%s/worker.log", g_dir);
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0]) snprintf(buf, cap, "%.800s", line);
    }
    fclose(f);
}

/* Starts the worker; 0 when it wrote its endpoint file, -1 when it exited (no GPU) or hung. */
static int s_start(const char *worker)
{
    char epfile[300], log[300];
    snprintf(epfile, sizeof epfile, "%s/endpoint", g_dir);
    snprintf(log, sizeof log, "%s/worker.log", g_dir);
    g_pid = fork();
    if (g_pid < 0) return -1;
    if (g_pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(worker, worker, "--device", "cuda", "--bind", "tcp://127.0.0.1:*", "--endpoint-file", epfile,
              "--threads", "2", "--max-request-bytes", "2G", "--max-result-bytes", "2G", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 6000; i++) { /* 60 s: a first CUDA start loads cuBLAS */
        int st;
        if (waitpid(g_pid, &st, WNOHANG) == g_pid) {
            g_pid = 0;
            return -1;
        }
        FILE *f = fopen(epfile, "r");
        if (f) {
            bool got = fgets(g_ep, sizeof g_ep, f) != NULL;
            fclose(f);
            if (got && strchr(g_ep, '\n')) {
                g_ep[strcspn(g_ep, "\n")] = '\0';
                return 0;
            }
        }
        s_sleep_ms(10);
    }
    kill(g_pid, SIGKILL);
    waitpid(g_pid, NULL, 0);
    g_pid = 0;
    return -1;
}

static int s_stop(void)
{
    if (g_pid <= 0) return -1;
    int st = -1;
    kill(g_pid, SIGTERM);
    waitpid(g_pid, &st, 0);
    g_pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void s_fill(void *p, titan_dtype dt, size_t count, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < count; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        double v = (double)(s >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        if (dt == TITAN_DTYPE_FLOAT32)
            ((float *)p)[i] = (float)v;
        else
            ((double *)p)[i] = v;
    }
}

/* OpenBLAS's product, for comparison. */
static void *s_cpu(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b)
{
    void *c = malloc(m * n * titan_dtype_size(dt));
    if (!c) return NULL;
    if (dt == TITAN_DTYPE_FLOAT32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k, b, (int)n,
                    0.0f, c, (int)n);
    else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0, a, (int)k, b, (int)n, 0.0,
                    c, (int)n);
    return c;
}

/* max |got - want| / max(1, max |want|): float32 sums of up to 4096 terms in [-1, 1] stay near 1e-5. */
static double s_rel(titan_dtype dt, const void *got, const void *want, size_t count)
{
    double diff = 0, mag = 1;
    for (size_t i = 0; i < count; i++) {
        double g = dt == TITAN_DTYPE_FLOAT32 ? ((const float *)got)[i] : ((const double *)got)[i];
        double w = dt == TITAN_DTYPE_FLOAT32 ? ((const float *)want)[i] : ((const double *)want)[i];
        if (!(fabs(g - w) <= diff)) diff = fabs(g - w); /* NaN counts as a difference */
        if (fabs(w) > mag) mag = fabs(w);
    }
    return diff / mag;
}

static json_t *s_gpu_info(titan_client *c)
{
    titan_gpu_info gi;
    char *raw = NULL;
    if (titan_client_gpu_info(c, &gi, &raw) != 0) return NULL;
    json_t *o = json_loads(raw, 0, NULL);
    free(raw);
    return o;
}

static void s_products(titan_client *c, int big)
{
    const size_t shapes[][3] = {{1, 1, 1},       {2, 3, 2},       {64, 64, 64},     {300, 200, 150},
                                {1031, 517, 263}, {2048, 1024, 768}, {3, 20000, 5},  {4, 3, 9000},
                                {(size_t)big, (size_t)big, (size_t)big}};
    const titan_dtype dts[] = {TITAN_DTYPE_FLOAT32, TITAN_DTYPE_FLOAT64};
    for (int d = 0; d < 2; d++) {
        titan_dtype dt = dts[d];
        double tol = dt == TITAN_DTYPE_FLOAT32 ? 1e-4 : 1e-11;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            size_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2], es = titan_dtype_size(dt);
            void *a = malloc(m * k * es), *b = malloc(k * n * es), *got = NULL;
            if (!a || !b) abort();
            s_fill(a, dt, m * k, s + 1);
            s_fill(b, dt, k * n, s + 101);
            int rc = titan_client_matmul(c, dt, m, k, n, a, b, &got);
            void *want = rc == 0 ? s_cpu(dt, m, k, n, a, b) : NULL;
            double rel = want ? s_rel(dt, got, want, m * n) : INFINITY;
            s_ok(rc == 0 && rel < tol, "%s %zux%zu @ %zux%zu matches OpenBLAS (relative difference %.3g)%s%s",
                 titan_dtype_name(dt), m, k, k, n, rel, rc ? ": " : "", rc ? titan_client_last_error(c) : "");
            free(a);
            free(b);
            free(got);
            free(want);
        }
    }
    titan_reply *r = NULL;
    int rc = titan_client_call(c, "{\"op\":\"matrix_multiply\",\"a\":[[1,2],[3,4]],\"b\":[[5,6],[7,8]]}", NULL, 0, &r);
    s_ok(rc == 0 && strcmp(titan_reply_header(r), "{\"result\":[[19.0,22.0],[43.0,50.0]]}") == 0,
         "the design's JSON example, exactly: %s", rc == 0 ? titan_reply_header(r) : titan_client_last_error(c));
    titan_reply_destroy(&r);
}

static void s_resident(titan_client *c)
{
    size_t m = 777, k = 333, n = 555;
    float *a = malloc(m * k * 4), *b = malloc(k * n * 4);
    if (!a || !b) abort();
    s_fill(a, TITAN_DTYPE_FLOAT32, m * k, 7);
    s_fill(b, TITAN_DTYPE_FLOAT32, k * n, 8);
    int64_t sa[2] = {(int64_t)m, (int64_t)k}, sb[2] = {(int64_t)k, (int64_t)n};
    char ra[TITAN_TENSOR_REF_MAX], rb[TITAN_TENSOR_REF_MAX], rc_[TITAN_TENSOR_REF_MAX];
    bool ok = titan_client_tensor_put(c, TITAN_DTYPE_FLOAT32, 2, sa, a, ra) == 0 &&
              titan_client_tensor_put(c, TITAN_DTYPE_FLOAT32, 2, sb, b, rb) == 0 &&
              titan_client_matmul_resident(c, ra, rb, rc_) == 0;
    void *got = NULL, *back = NULL;
    size_t bytes = 0;
    ok = ok && titan_client_tensor_get(c, rc_, NULL, NULL, NULL, &got, &bytes) == 0 && bytes == m * n * 4;
    void *want = s_cpu(TITAN_DTYPE_FLOAT32, m, k, n, a, b);
    double rel = ok ? s_rel(TITAN_DTYPE_FLOAT32, got, want, m * n) : INFINITY;
    s_ok(ok && rel < 1e-4, "resident operands, kept product read back (relative difference %.3g)%s%s", rel,
         ok ? "" : ": ", ok ? "" : titan_client_last_error(c));
    ok = titan_client_tensor_get(c, ra, NULL, NULL, NULL, &back, &bytes) == 0;
    s_ok(ok && bytes == m * k * 4 && memcmp(back, a, bytes) == 0, "tensor_get returns the bytes put");
    ok = titan_client_tensor_free(c, ra) == 0 && titan_client_tensor_free(c, rb) == 0 &&
         titan_client_tensor_free(c, rc_) == 0;
    s_ok(ok, "tensor_free of all three");
    free(a);
    free(b);
    free(got);
    free(back);
    free(want);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH-TO-TITAN-WORKER [--big N]\n", argv[0]);
        return 2;
    }
    int big = 4096;
    if (argc == 4 && strcmp(argv[2], "--big") == 0) big = atoi(argv[3]);
    if (big < 1 || big > 16384) big = 4096;
    char module[4200];
    snprintf(module, sizeof module, "%s", argv[1]);
    char *slash = strrchr(module, '/');
    snprintf(slash ? slash + 1 : module, sizeof module - (size_t)(slash ? slash + 1 - module : 0),
             "titan-backend-cuda.so");
    if (access(module, F_OK) != 0 && !getenv("TITAN_CUDA_MODULE")) {
        printf("1..0 # SKIP titan-worker was built without the CUDA backend (no %s)\n", module);
        return 0;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/titan-cuda-check-XXXXXX");
    if (!mkdtemp(g_dir)) return 2;
    if (s_start(argv[1]) != 0) {
        char tail[900];
        s_log_tail(tail, sizeof tail);
        printf("1..0 # SKIP no usable CUDA device here: %.400s\n", tail);
        return 0;
    }
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 600000;
    o.retries = 0;
    o.identity = "cuda-check";
    titan_client *c = titan_client_new(g_ep, &o);
    if (!c) {
        printf("Bail out! no client for %s\n", g_ep);
        s_stop();
        return 1;
    }
    json_t *gi = s_gpu_info(c);
    const char *backend = json_string_value(json_object_get(gi, "backend"));
    const char *cap = json_string_value(json_object_get(gi, "cuda_capability"));
    s_ok(backend && strcmp(backend, "cuda") == 0, "gpu_info: backend cuda (%s)",
         json_string_value(json_object_get(gi, "name")) ? json_string_value(json_object_get(gi, "name")) : "?");
    s_ok(cap && strchr(cap, '.'), "gpu_info: compute capability %s", cap ? cap : "(none)");
    s_ok(json_integer_value(json_object_get(gi, "device_index")) == 0 &&
             json_integer_value(json_object_get(gi, "multi_processor_count")) > 0,
         "gpu_info: device 0 and its multiprocessors");
    const char *drv = json_string_value(json_object_get(gi, "driver_version"));
    const char *rt = json_string_value(json_object_get(gi, "runtime_version"));
    s_ok(drv && rt, "gpu_info: driver %s, CUDA runtime %s", drv ? drv : "(null)", rt ? rt : "(null)");
    s_ok(json_is_true(json_object_get(gi, "ready")) && json_is_object(json_object_get(gi, "memory_pool")),
         "gpu_info: ready, with the pool's figures");
    char *dump = json_dumps(gi, JSON_COMPACT);
    printf("# gpu_info: %s\n", dump ? dump : "?");
    free(dump);
    json_decref(gi);

    s_products(c, big);
    s_resident(c);

    /* Steady state: the same product again and again allocates no device memory. */
    size_t d = 512;
    float *x = malloc(d * d * 4);
    if (!x) abort();
    s_fill(x, TITAN_DTYPE_FLOAT32, d * d, 99);
    for (int i = 0; i < 3; i++) {
        void *out = NULL;
        titan_client_matmul(c, TITAN_DTYPE_FLOAT32, d, d, d, x, x, &out);
        free(out);
    }
    gi = s_gpu_info(c);
    json_int_t before = json_integer_value(json_object_get(json_object_get(gi, "memory_pool"), "device_allocs"));
    json_decref(gi);
    for (int i = 0; i < 20; i++) {
        void *out = NULL;
        titan_client_matmul(c, TITAN_DTYPE_FLOAT32, d, d, d, x, x, &out);
        free(out);
    }
    gi = s_gpu_info(c);
    json_int_t after = json_integer_value(json_object_get(json_object_get(gi, "memory_pool"), "device_allocs"));
    json_decref(gi);
    s_ok(before > 0 && after == before, "20 same-sized products allocate no device memory (cudaMalloc calls: %lld, "
         "then %lld)", (long long)before, (long long)after);
    free(x);
    titan_client_destroy(&c);
    int rc = s_stop();
    s_ok(rc == 0, "the worker exits cleanly on SIGTERM (status %d)", rc);
    printf("1..%d\n", g_n);
    return g_failed ? 1 : 0;
}
