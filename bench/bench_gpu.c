/* bench_gpu.c - matrix_multiply through a CUDA titan-worker against in-process cuBLAS in the same run,
 * with resident operands (tensor_put, "keep") and with the data sent as binary frames, the time split
 * into transfer and compute, beside a bare ZeroMQ loopback round trip of as many bytes.
 * bench/gpu.sh drives it (`make bench-gpu`). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <jansson.h>
#include <zmq.h>

#include "titan/titan.h"

#include "benchutil.h"

#define MAX_SIZES 16
#define MAX_REPS 1000
#define TARGET_N 4096
#define TARGET_RATIO 1.1

/* A timed measure: its samples in ms, and their median, min and max once s_stat_done ran. */
typedef struct {
    double t[MAX_REPS];
    int n;
    double median, min, max;
} s_stat;

static void s_stat_add(s_stat *s, double ms)
{
    if (s->n < MAX_REPS) s->t[s->n++] = ms;
}

static void s_stat_done(s_stat *s)
{
    if (s->n == 0) {
        s->median = s->min = s->max = NAN;
        return;
    }
    double sorted[MAX_REPS];
    memcpy(sorted, s->t, sizeof(double) * (size_t)s->n);
    qsort(sorted, (size_t)s->n, sizeof(double), bench_cmp_double);
    int n = s->n;
    s->median = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    s->min = sorted[0];
    s->max = sorted[n - 1];
}

typedef struct {
    const char *endpoint;
    int sizes[MAX_SIZES];
    int nsizes;
    int reps;
    titan_dtype dtype;
    const char *json_path;
    const char *table_path;
    int timeout_ms;
    int cuda_device;
} s_config;

/* Everything measured for one n (times in ms). */
typedef struct {
    int n;
    size_t bytes_moved; /* A and B in, C out */
    s_stat gemm;        /* (a) in-process cuBLAS, operands resident */
    /* (b) in-process with copies from and to pageable memory: the total and each part */
    s_stat copy_total, copy_h2d, copy_gemm, copy_d2h;
    double put_ms[2];            /* tensor_put of A and of B, once each */
    s_stat res;                  /* (c) service, resident operands, result kept */
    s_stat res_get;              /* (c) and tensor_get of the result */
    s_stat get;                  /* the tensor_get alone */
    s_stat svc;                  /* (d) service, binary frames in and out */
    s_stat echo;                 /* (e) ZeroMQ loopback, the same bytes, no compute */
    double maxdiff, maxref, rel; /* (d) against (a)'s product */
    double rel_get;              /* (c)'s tensor_get against (a)'s product */
    bool ok;
} s_row;

static const char *s_dtype_name(titan_dtype dt)
{
    return dt == TITAN_DTYPE_FLOAT64 ? "float64" : "float32";
}

static size_t s_itemsize(titan_dtype dt)
{
    return dt == TITAN_DTYPE_FLOAT64 ? 8 : 4;
}

/* Uniform in [-1, 1) from a fixed-seed xorshift, so every run multiplies the same matrices. */
static void s_fill(void *x, titan_dtype dt, size_t count, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < count; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        double v = (double)(s >> 40) / (double)(1ull << 23) - 1.0;
        if (dt == TITAN_DTYPE_FLOAT64)
            ((double *)x)[i] = v;
        else
            ((float *)x)[i] = (float)v;
    }
}

static double s_elem(const void *x, titan_dtype dt, size_t i)
{
    return dt == TITAN_DTYPE_FLOAT64 ? ((const double *)x)[i] : (double)((const float *)x)[i];
}

/* Largest |got - ref| over the largest |ref|; *maxdiff and *maxref get both parts. NaN counts as infinite. */
static double s_compare(const void *got, const void *ref, titan_dtype dt, size_t count, double *maxdiff,
                        double *maxref)
{
    double md = 0, mr = 0;
    for (size_t i = 0; i < count; i++) {
        double g = s_elem(got, dt, i), r = s_elem(ref, dt, i), d = fabs(g - r);
        if (!(d <= md)) md = isnan(d) ? INFINITY : d;
        if (fabs(r) > mr) mr = fabs(r);
    }
    if (maxdiff) *maxdiff = md;
    if (maxref) *maxref = mr;
    return mr > 0 ? md / mr : md;
}

/* ---- in-process CUDA ---- */

static cublasHandle_t s_blas;

#define CK(call)                                                                                             \
    do {                                                                                                     \
        cudaError_t e_ = (call);                                                                             \
        if (e_ != cudaSuccess) {                                                                             \
            fprintf(stderr, "bench_gpu: n=%d: %s failed: %s (%s)\n", n, #call, cudaGetErrorString(e_),       \
                    cudaGetErrorName(e_));                                                                   \
            goto out;                                                                                        \
        }                                                                                                    \
    } while (0)

/* Row-major C = A * B is column-major C' = B' * A': the same call the worker's CUDA backend makes. */
static cublasStatus_t s_gemm(titan_dtype dt, int n, const void *dA, const void *dB, void *dC)
{
    if (dt == TITAN_DTYPE_FLOAT64) {
        const double one = 1, zero = 0;
        return cublasDgemm(s_blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, dB, n, dA, n, &zero, dC, n);
    }
    const float one = 1, zero = 0;
    return cublasSgemm(s_blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, dB, n, dA, n, &zero, dC, n);
}

#define CKB(call)                                                                                            \
    do {                                                                                                     \
        cublasStatus_t s_ = (call);                                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
            fprintf(stderr, "bench_gpu: n=%d: cuBLAS gemm failed: status %d\n", n, (int)s_);                 \
            goto out;                                                                                        \
        }                                                                                                    \
    } while (0)

/* (a) and (b). ref gets the product. Returns 0, or 1 after printing why. */
static int s_bench_inprocess(const s_config *cfg, s_row *r, const void *a, const void *b, void *ref)
{
    int n = r->n, rc = 1;
    size_t bytes = (size_t)n * (size_t)n * s_itemsize(cfg->dtype);
    void *dA = NULL, *dB = NULL, *dC = NULL;
    CK(cudaMalloc(&dA, bytes));
    CK(cudaMalloc(&dB, bytes));
    CK(cudaMalloc(&dC, bytes));

    /* (a) compute only: the operands are on the device already. */
    CK(cudaMemcpy(dA, a, bytes, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, b, bytes, cudaMemcpyHostToDevice));
    for (int i = -1; i < cfg->reps; i++) { /* rep -1 warms up */
        double t0 = bench_now();
        CKB(s_gemm(cfg->dtype, n, dA, dB, dC));
        CK(cudaDeviceSynchronize());
        if (i >= 0) s_stat_add(&r->gemm, (bench_now() - t0) * 1e3);
    }
    CK(cudaMemcpy(ref, dC, bytes, cudaMemcpyDeviceToHost));

    /* (b) with the copies from and to pageable host memory, each part timed. */
    for (int i = -1; i < cfg->reps; i++) {
        CK(cudaMemset(dC, 0, bytes));
        CK(cudaDeviceSynchronize());
        double t0 = bench_now();
        CK(cudaMemcpy(dA, a, bytes, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dB, b, bytes, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
        double t1 = bench_now();
        CKB(s_gemm(cfg->dtype, n, dA, dB, dC));
        CK(cudaDeviceSynchronize());
        double t2 = bench_now();
        CK(cudaMemcpy(ref, dC, bytes, cudaMemcpyDeviceToHost));
        CK(cudaDeviceSynchronize());
        double t3 = bench_now();
        if (i < 0) continue;
        s_stat_add(&r->copy_total, (t3 - t0) * 1e3);
        s_stat_add(&r->copy_h2d, (t1 - t0) * 1e3);
        s_stat_add(&r->copy_gemm, (t2 - t1) * 1e3);
        s_stat_add(&r->copy_d2h, (t3 - t2) * 1e3);
    }
    rc = 0;
out:
    cudaFree(dA);
    cudaFree(dB);
    cudaFree(dC);
    return rc;
}

/* ---- the service ---- */

/* Sends one request. Returns the reply (the caller destroys it) with its parsed header in *hdr
 * (the caller decrefs it), or NULL after printing why: a local failure or an error reply. */
static titan_reply *s_call(titan_client *c, int n, const char *what, const char *req,
                           const titan_frame *frames, size_t nframes, json_t **hdr)
{
    titan_reply *reply = NULL;
    *hdr = NULL;
    int err = titan_client_call(c, req, frames, nframes, &reply);
    if (err < 0) {
        fprintf(stderr, "bench_gpu: n=%d: %s: %s (%s: %s)%s\n", n, what, strerror(-err),
                titan_client_last_code(c), titan_client_last_error(c),
                err == -ETIMEDOUT ? "; raise --timeout-ms, or check that the worker is running" : "");
        return NULL;
    }
    json_error_t jerr;
    json_t *h = json_loads(titan_reply_header(reply), 0, &jerr);
    if (!json_is_object(h)) {
        fprintf(stderr, "bench_gpu: n=%d: %s: the reply header is not a JSON object: %s\n", n, what,
                jerr.text);
        json_decref(h);
        titan_reply_destroy(&reply);
        return NULL;
    }
    json_t *e = json_object_get(h, "error");
    if (e) {
        const char *code = json_string_value(json_object_get(h, "code"));
        fprintf(stderr, "bench_gpu: n=%d: %s: the worker answered %s: %s\n", n, what,
                code ? code : "an error", json_is_string(e) ? json_string_value(e) : "?");
        if (code && !strcmp(code, "too_large"))
            fprintf(stderr,
                    "bench_gpu: start the worker with a larger --max-request-bytes / --max-result-bytes "
                    "(bench/gpu.sh passes --max-request-bytes 2G), or --tensor-memory-mb for resident "
                    "tensors\n");
        json_decref(h);
        titan_reply_destroy(&reply);
        return NULL;
    }
    *hdr = h;
    return reply;
}

/* The "ref" of a tensor_put reply (top level) or of a kept result ({"result":{"ref"}}), copied into buf. */
static int s_ref_of(json_t *hdr, char *buf, size_t size)
{
    json_t *res = json_object_get(hdr, "result");
    const char *ref = json_string_value(json_object_get(res ? res : hdr, "ref"));
    if (!ref || strlen(ref) >= size) return -1;
    memcpy(buf, ref, strlen(ref) + 1);
    return 0;
}

/* A request header with one handle: {"op": op, "ref": ref}. Malloc'd. */
static char *s_ref_request(const char *op, const char *ref)
{
    json_t *o = json_pack("{s:s, s:s}", "op", op, "ref", ref);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

static int s_free_ref(titan_client *c, int n, const char *ref)
{
    char *req = s_ref_request("tensor_free", ref);
    json_t *h;
    titan_reply *rep = req ? s_call(c, n, "tensor_free", req, NULL, 0, &h) : NULL;
    free(req);
    if (!rep) return -1;
    json_decref(h);
    titan_reply_destroy(&rep);
    return 0;
}

/* (c): tensor_put A and B, then matrix_multiply on the handles with "keep", alone and followed by a
 * tensor_get of the result. Returns 0, or 1 after printing why. */
static int s_bench_resident(titan_client *c, const s_config *cfg, s_row *r, const void *a, const void *b,
                            const void *ref)
{
    int n = r->n, rc = 1;
    const char *dt = s_dtype_name(cfg->dtype);
    size_t count = (size_t)n * (size_t)n, bytes = count * s_itemsize(cfg->dtype);
    char href[2][128] = {"", ""}, cref[128];
    char req[512];
    char *mm = NULL, *get = NULL;
    json_t *h = NULL;
    titan_reply *rep = NULL;

    snprintf(req, sizeof req,
             "{\"op\":\"tensor_put\",\"tensor\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"frame\":1}}", dt, n, n);
    for (int k = 0; k < 2; k++) {
        titan_frame f = {k ? b : a, bytes};
        double t0 = bench_now();
        rep = s_call(c, n, k ? "tensor_put B" : "tensor_put A", req, &f, 1, &h);
        if (!rep) goto out;
        r->put_ms[k] = (bench_now() - t0) * 1e3;
        if (s_ref_of(h, href[k], sizeof href[k])) {
            fprintf(stderr, "bench_gpu: n=%d: tensor_put answered no \"ref\": %s\n", n,
                    titan_reply_header(rep));
            goto out;
        }
        json_decref(h), h = NULL;
        titan_reply_destroy(&rep);
    }
    json_t *o = json_pack("{s:s, s:{s:s}, s:{s:s}, s:b}", "op", "matrix_multiply", "a", "ref", href[0], "b",
                          "ref", href[1], "keep", 1);
    mm = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!mm) {
        fprintf(stderr, "bench_gpu: out of memory\n");
        goto out;
    }

    for (int pass = 0; pass < 2; pass++) { /* pass 0: the product alone; 1: and tensor_get */
        for (int i = -1; i < cfg->reps; i++) {
            double t0 = bench_now();
            rep = s_call(c, n, "matrix_multiply (resident, keep)", mm, NULL, 0, &h);
            if (!rep) goto out;
            if (s_ref_of(h, cref, sizeof cref)) {
                fprintf(stderr,
                        "bench_gpu: n=%d: matrix_multiply with \"keep\" answered no result \"ref\": %s\n", n,
                        titan_reply_header(rep));
                goto out;
            }
            json_decref(h), h = NULL;
            titan_reply_destroy(&rep);
            double tmid = bench_now();
            if (pass == 1) {
                free(get);
                if (!(get = s_ref_request("tensor_get", cref))) goto out;
                rep = s_call(c, n, "tensor_get", get, NULL, 0, &h);
                if (!rep) goto out;
            }
            double t1 = bench_now();
            if (i >= 0) s_stat_add(pass ? &r->res_get : &r->res, (t1 - t0) * 1e3);
            if (i >= 0 && pass) s_stat_add(&r->get, (t1 - tmid) * 1e3);
            if (pass == 1) {
                size_t got_size = 0;
                const void *got = titan_reply_frame(rep, 0, &got_size);
                if (!got || got_size != bytes) {
                    fprintf(stderr, "bench_gpu: n=%d: tensor_get answered %zu bytes, not %zu: %s\n", n,
                            got_size, bytes, titan_reply_header(rep));
                    goto out;
                }
                if (i == cfg->reps - 1) r->rel_get = s_compare(got, ref, cfg->dtype, count, NULL, NULL);
                json_decref(h), h = NULL;
                titan_reply_destroy(&rep);
            }
            if (s_free_ref(c, n, cref)) goto out;
        }
    }
    rc = 0;
out:
    json_decref(h);
    titan_reply_destroy(&rep);
    for (int k = 0; k < 2; k++)
        if (href[k][0]) s_free_ref(c, n, href[k]);
    free(mm);
    free(get);
    return rc;
}

/* (d): A and B as binary frames, C back as one. Compares the last product with ref. Returns 0, or 1. */
static int s_bench_service(titan_client *c, const s_config *cfg, s_row *r, const void *a, const void *b,
                           const void *ref)
{
    int n = r->n;
    const char *dt = s_dtype_name(cfg->dtype);
    size_t count = (size_t)n * (size_t)n, bytes = count * s_itemsize(cfg->dtype);
    char req[512];
    snprintf(req, sizeof req,
             "{\"op\":\"matrix_multiply\",\"a\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"frame\":1},"
             "\"b\":{\"dtype\":\"%s\",\"shape\":[%d,%d],\"frame\":2}}",
             dt, n, n, dt, n, n);
    titan_frame f[2] = {{a, bytes}, {b, bytes}};
    for (int i = -1; i < cfg->reps; i++) {
        json_t *h;
        double t0 = bench_now();
        titan_reply *rep = s_call(c, n, "matrix_multiply (binary frames)", req, f, 2, &h);
        if (!rep) return 1;
        double ms = (bench_now() - t0) * 1e3;
        size_t got_size = 0;
        const void *got = titan_reply_frame(rep, 0, &got_size);
        json_t *res = json_object_get(h, "result");
        const char *rdt = json_string_value(json_object_get(res, "dtype"));
        if (!got || got_size != bytes || !rdt || strcmp(rdt, dt)) {
            fprintf(stderr, "bench_gpu: n=%d: matrix_multiply answered %zu bytes of %s, not %zu of %s: %s\n",
                    n, got_size, rdt ? rdt : "?", bytes, dt, titan_reply_header(rep));
            json_decref(h);
            titan_reply_destroy(&rep);
            return 1;
        }
        if (i >= 0) s_stat_add(&r->svc, ms);
        if (i == cfg->reps - 1) r->rel = s_compare(got, ref, cfg->dtype, count, &r->maxdiff, &r->maxref);
        json_decref(h);
        titan_reply_destroy(&rep);
    }
    return 0;
}

/* ---- (e) ZeroMQ loopback: a ROUTER thread that answers [hdr, A, B] with [hdr, A] ---- */

typedef struct {
    void *ctx, *sock;
    pthread_t thread;
    bool running;
    char endpoint[256];
} s_echo;

static void *s_echo_main(void *arg)
{
    s_echo *e = arg;
    zmq_msg_t m[8];
    for (;;) {
        int k = 0, more = 1;
        while (more) {
            zmq_msg_t x;
            zmq_msg_init(&x);
            if (zmq_msg_recv(&x, e->sock, 0) < 0) {
                zmq_msg_close(&x);
                for (int j = 0; j < k; j++)
                    zmq_msg_close(&m[j]);
                if (zmq_errno() == EINTR) goto next;
                return NULL; /* ETERM: the context is shutting down */
            }
            more = zmq_msg_more(&x);
            if (k < 8)
                m[k++] = x;
            else
                zmq_msg_close(&x);
        }
        /* [id, hdr, A, B] -> [id, hdr, A]: n^2 elements back for 2 n^2 in, as the service moves.
         * Anything else goes back whole. Each frame is sent from the received message, without a copy. */
        int nsend = k == 4 ? 3 : k;
        for (int j = 0; j < k; j++) {
            if (j < nsend && zmq_msg_send(&m[j], e->sock, j + 1 < nsend ? ZMQ_SNDMORE : 0) >= 0) continue;
            zmq_msg_close(&m[j]);
        }
    next:;
    }
}

static int s_echo_start(s_echo *e)
{
    int linger = 0;
    memset(e, 0, sizeof *e);
    e->ctx = zmq_ctx_new();
    e->sock = e->ctx ? zmq_socket(e->ctx, ZMQ_ROUTER) : NULL;
    size_t len = sizeof e->endpoint;
    if (!e->sock || zmq_setsockopt(e->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(e->sock, "tcp://127.0.0.1:*") ||
        zmq_getsockopt(e->sock, ZMQ_LAST_ENDPOINT, e->endpoint, &len)) {
        fprintf(stderr, "bench_gpu: cannot start the loopback echo on tcp://127.0.0.1:*: %s\n",
                zmq_strerror(zmq_errno()));
        return -1;
    }
    if (pthread_create(&e->thread, NULL, s_echo_main, e) != 0) {
        fprintf(stderr, "bench_gpu: cannot start the loopback echo thread\n");
        return -1;
    }
    e->running = true;
    return 0;
}

static void s_echo_stop(s_echo *e)
{
    if (e->ctx) zmq_ctx_shutdown(e->ctx);
    if (e->running) pthread_join(e->thread, NULL);
    if (e->sock) zmq_close(e->sock);
    if (e->ctx) zmq_ctx_term(e->ctx);
    memset(e, 0, sizeof *e);
}

static void s_nofree(void *data, void *hint)
{
    (void)data;
    (void)hint;
}

/* Sends `size` bytes from `data` without copying them (they outlive the run). */
static int s_send_lent(void *sock, const void *data, size_t size, int flags)
{
    zmq_msg_t m;
    if (zmq_msg_init_data(&m, (void *)data, size, s_nofree, NULL) != 0) return -1;
    if (zmq_msg_send(&m, sock, flags) < 0) {
        zmq_msg_close(&m);
        return -1;
    }
    return 0;
}

/* (e): [hdr, A, B] out, [hdr, A-sized frame] back, through the echo thread over tcp loopback. */
static int s_bench_echo(void *sock, const s_config *cfg, s_row *r, const void *a, const void *b)
{
    int n = r->n;
    size_t bytes = (size_t)n * (size_t)n * s_itemsize(cfg->dtype);
    for (int i = -1; i < cfg->reps; i++) {
        double t0 = bench_now();
        if (zmq_send(sock, "{}", 2, ZMQ_SNDMORE) < 0 || s_send_lent(sock, a, bytes, ZMQ_SNDMORE) ||
            s_send_lent(sock, b, bytes, 0)) {
            fprintf(stderr, "bench_gpu: n=%d: loopback echo: send: %s\n", n, zmq_strerror(zmq_errno()));
            return 1;
        }
        int frames = 0;
        size_t last = 0;
        zmq_msg_t m;
        zmq_msg_init(&m);
        do {
            if (zmq_msg_recv(&m, sock, 0) < 0) {
                fprintf(stderr, "bench_gpu: n=%d: loopback echo: recv: %s\n", n, zmq_strerror(zmq_errno()));
                zmq_msg_close(&m);
                return 1;
            }
            frames++;
            last = zmq_msg_size(&m);
        } while (zmq_msg_more(&m));
        double ms = (bench_now() - t0) * 1e3;
        zmq_msg_close(&m);
        if (frames != 2 || last != bytes) {
            fprintf(stderr, "bench_gpu: n=%d: loopback echo answered %d frames, the last of %zu bytes\n", n,
                    frames, last);
            return 1;
        }
        if (i >= 0) s_stat_add(&r->echo, ms);
    }
    return 0;
}

/* ---- output ---- */

static double s_gbps(size_t bytes, double ms)
{
    return ms > 0 ? (double)bytes / (ms * 1e-3) * 1e-9 : NAN;
}

static double s_gflops(int n, double ms)
{
    return ms > 0 ? 2.0 * n * (double)n * n / (ms * 1e-3) * 1e-9 : NAN;
}

/* x with printf format fmt into buf, or "-" when x is not a finite number. */
static const char *s_fmt(char *buf, size_t size, const char *fmt, double x)
{
    if (!isfinite(x)) return "-";
    snprintf(buf, size, fmt, x);
    return buf;
}

/* The share of loopback bandwidth the service's transfer reached; NaN when the transfer time is not positive
 * (the service was not measurably slower than in-process compute). */
static double s_of_loopback(const s_row *r)
{
    double xfer = r->svc.median - r->gemm.median;
    return xfer > 0 ? r->echo.median / xfer : NAN;
}

static void s_tables(FILE *f, const s_config *cfg, const s_row *rows, int nrows, const char *gpu)
{
    fprintf(
        f,
        "### matrix_multiply %s on %s: titan (CUDA worker) against in-process cuBLAS, median of %d (ms)\n\n",
        s_dtype_name(cfg->dtype), gpu, cfg->reps);
    fprintf(f,
            "| n | cuBLAS ms | GFLOP/s | resident ms | vs cuBLAS | resident + get C ms | cuBLAS + copies ms "
            "(H2D / gemm / D2H) | titan + transfer ms | vs cuBLAS + copies | max rel diff |\n");
    fprintf(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < nrows; i++) {
        const s_row *r = &rows[i];
        fprintf(f,
                "| %d | %.3f | %.0f | %.3f | %.3fx%s | %.3f | %.3f (%.3f / %.3f / %.3f) | %.3f | %.2fx | "
                "%.1e%s |\n",
                r->n, r->gemm.median, s_gflops(r->n, r->gemm.median), r->res.median,
                r->res.median / r->gemm.median,
                r->n == TARGET_N ? (r->res.median / r->gemm.median <= TARGET_RATIO ? " (<= 1.1: met)"
                                                                                   : " (<= 1.1: MISSED)")
                                 : "",
                r->res_get.median, r->copy_total.median, r->copy_h2d.median, r->copy_gemm.median,
                r->copy_d2h.median, r->svc.median, r->svc.median / r->copy_total.median, r->rel,
                r->ok ? "" : " WRONG");
    }
    fprintf(f,
            "\n### where the bytes go: A and B in, C out (transfer = titan + transfer - cuBLAS compute)\n\n");
    fprintf(
        f,
        "| n | MB moved | transfer ms | GB/s | loopback echo ms | loopback GB/s | of loopback | in-process "
        "H2D + D2H ms | tensor_put A+B ms | tensor_get C ms |\n");
    fprintf(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < nrows; i++) {
        const s_row *r = &rows[i];
        double xfer = r->svc.median - r->gemm.median;
        char b1[32], b2[32];
        fprintf(f, "| %d | %.1f | %.2f | %s | %.2f | %.2f | %s | %.2f | %.2f | %.2f |\n", r->n,
                (double)r->bytes_moved / 1e6, xfer,
                s_fmt(b1, sizeof b1, "%.2f", s_gbps(r->bytes_moved, xfer)), r->echo.median,
                s_gbps(r->bytes_moved, r->echo.median),
                s_fmt(b2, sizeof b2, "%.0f%%", 100.0 * s_of_loopback(r)),
                r->copy_h2d.median + r->copy_d2h.median, r->put_ms[0] + r->put_ms[1], r->get.median);
    }
    fprintf(
        f,
        "\nresident: tensor_put A and B once, then matrix_multiply "
        "{\"a\":{\"ref\"},\"b\":{\"ref\"},\"keep\":true} "
        "round trips (the result freed after each, untimed); target <= %.1fx cuBLAS at n=%d.\n"
        "cuBLAS + copies: pageable host memory, cudaMemcpy; titan + transfer: A and B as binary frames over "
        "tcp loopback, C back as one. loopback echo: the same bytes through ZeroMQ tcp://127.0.0.1 with no "
        "compute; 'of loopback' = loopback echo ms / transfer ms. MB = 10^6 bytes, GB/s = 10^9 bytes/s.\n",
        TARGET_RATIO, TARGET_N);
}

static json_t *s_stat_json(const s_stat *s)
{
    json_t *t = json_array();
    for (int i = 0; i < s->n; i++)
        json_array_append_new(t, json_real(s->t[i]));
    return json_pack("{s:f, s:f, s:f, s:o}", "median_ms", s->median, "min_ms", s->min, "max_ms", s->max,
                     "samples_ms", t);
}

/* json_real refuses NaN and infinities: those become null. */
static json_t *s_num(double x)
{
    return isfinite(x) ? json_real(x) : json_null();
}

static int s_write_json(const char *path, const s_config *cfg, json_t *machine, const s_row *rows, int nrows)
{
    json_t *arr = json_array();
    for (int i = 0; i < nrows; i++) {
        const s_row *r = &rows[i];
        double xfer = r->svc.median - r->gemm.median;
        json_t *o = json_object();
        json_object_set_new(o, "n", json_integer(r->n));
        json_object_set_new(o, "bytes_moved", json_integer((json_int_t)r->bytes_moved));
        json_object_set_new(o, "cublas", s_stat_json(&r->gemm));
        json_object_set_new(o, "cublas_gflops", s_num(s_gflops(r->n, r->gemm.median)));
        json_object_set_new(o, "cublas_copies", s_stat_json(&r->copy_total));
        json_object_set_new(o, "cublas_copies_h2d", s_stat_json(&r->copy_h2d));
        json_object_set_new(o, "cublas_copies_gemm", s_stat_json(&r->copy_gemm));
        json_object_set_new(o, "cublas_copies_d2h", s_stat_json(&r->copy_d2h));
        json_object_set_new(o, "tensor_put_a_ms", s_num(r->put_ms[0]));
        json_object_set_new(o, "tensor_put_b_ms", s_num(r->put_ms[1]));
        json_object_set_new(o, "resident", s_stat_json(&r->res));
        json_object_set_new(o, "resident_ratio", s_num(r->res.median / r->gemm.median));
        json_object_set_new(o, "resident_get", s_stat_json(&r->res_get));
        json_object_set_new(o, "tensor_get_c", s_stat_json(&r->get));
        json_object_set_new(o, "service", s_stat_json(&r->svc));
        json_object_set_new(o, "service_ratio", s_num(r->svc.median / r->copy_total.median));
        json_object_set_new(o, "service_gflops", s_num(s_gflops(r->n, r->svc.median)));
        json_object_set_new(o, "transfer_ms", s_num(xfer));
        json_object_set_new(o, "transfer_gbps", s_num(s_gbps(r->bytes_moved, xfer)));
        json_object_set_new(o, "loopback", s_stat_json(&r->echo));
        json_object_set_new(o, "loopback_gbps", s_num(s_gbps(r->bytes_moved, r->echo.median)));
        json_object_set_new(o, "transfer_of_loopback", s_num(s_of_loopback(r)));
        json_object_set_new(o, "max_abs_diff", s_num(r->maxdiff));
        json_object_set_new(o, "max_abs_ref", s_num(r->maxref));
        json_object_set_new(o, "max_rel_diff", s_num(r->rel));
        json_object_set_new(o, "max_rel_diff_resident_get", s_num(r->rel_get));
        json_object_set_new(o, "check", json_string(r->ok ? "ok" : "WRONG"));
        json_array_append_new(arr, o);
    }
    json_t *target = NULL;
    for (int i = 0; i < nrows; i++)
        if (rows[i].n == TARGET_N && !target) {
            double ratio = rows[i].res.median / rows[i].gemm.median;
            target = json_pack("{s:i, s:f, s:o, s:b}", "n", TARGET_N, "max_ratio", TARGET_RATIO, "ratio",
                               s_num(ratio), "met", ratio <= TARGET_RATIO);
        }
    json_t *doc = json_pack("{s:s, s:s, s:i, s:O, s:o, s:o}", "bench", "bench_gpu", "dtype",
                            s_dtype_name(cfg->dtype), "reps", cfg->reps, "machine", machine, "target",
                            target ? target : json_null(), "sizes", arr);
    int rc = doc ? json_dump_file(doc, path, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) : -1;
    json_decref(doc);
    if (rc != 0) fprintf(stderr, "bench_gpu: cannot write %s: %s\n", path, strerror(errno));
    return rc;
}

/* ---- arguments ---- */

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: bench_gpu [options] --endpoint ENDPOINT\n"
            "  Times matrix_multiply through a titan-worker started with --device cuda against in-process\n"
            "  cuBLAS on this machine's GPU, in the same run, for each n:\n"
            "    cuBLAS            in-process gemm, operands already on the device (compute only)\n"
            "    cuBLAS + copies   pageable A, B -> cudaMemcpy H2D, gemm, C D2H (each part timed)\n"
            "    resident          tensor_put A and B once, then matrix_multiply on the handles with\n"
            "                      \"keep\" (and with a tensor_get of C); ratio against cuBLAS\n"
            "    titan + transfer  A and B as binary frames, C back as one; ratio against cuBLAS + copies;\n"
            "                      transfer = its time minus cuBLAS compute, in GB/s\n"
            "    loopback          the same bytes through ZeroMQ over tcp://127.0.0.1, no compute\n"
            "  and checks the service's product against cuBLAS's once per n.\n"
            "Options:\n"
            "  --endpoint EP      the worker (e.g. tcp://127.0.0.1:5555); required\n"
            "  --sizes LIST       square sizes n (default 1024,2048,4096,8192)\n"
            "  --reps R           timed reps per measure, after one warm-up (default 5)\n"
            "  --dtype T          float32 (default) or float64\n"
            "  --json FILE        also write the results as JSON\n"
            "  --table FILE       also write the markdown tables\n"
            "  --timeout-ms N     per-request timeout (default 300000)\n"
            "  --cuda-device N    the GPU for in-process cuBLAS (default 0; use the worker's)\n"
            "  -h, --help         this text\n"
            "The worker must accept the requests: n=8192 float32 sends 512 MiB (A + B), under the default\n"
            "--max-request-bytes 1G; float64 at n=8192 needs --max-request-bytes 2G. Resident tensors use\n"
            "--tensor-memory-mb (default half the GPU). Exit status: 0 when every measure ran and every\n"
            "product matched (the 1.1x target is reported, not enforced); 1 on a failure or a wrong\n"
            "product; 2 for bad arguments or no CUDA device.\n");
}

int main(int argc, char **argv)
{
    s_config cfg = {.sizes = {1024, 2048, 4096, 8192},
                    .nsizes = 4,
                    .reps = 5,
                    .dtype = TITAN_DTYPE_FLOAT32,
                    .timeout_ms = 300000};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = v != NULL;
        long l = 0;
        if (!strcmp(a, "--endpoint") && v)
            cfg.endpoint = v;
        else if (!strcmp(a, "--sizes") && v)
            ok = bench_parse_sizes(v, 1, 32768, cfg.sizes, MAX_SIZES, &cfg.nsizes);
        else if (!strcmp(a, "--reps") && v)
            ok = bench_parse_long(v, 1, MAX_REPS, &l), cfg.reps = (int)l;
        else if (!strcmp(a, "--dtype") && v) {
            if (!strcmp(v, "float32"))
                cfg.dtype = TITAN_DTYPE_FLOAT32;
            else if (!strcmp(v, "float64"))
                cfg.dtype = TITAN_DTYPE_FLOAT64;
            else
                ok = false;
        } else if (!strcmp(a, "--json") && v)
            cfg.json_path = v;
        else if (!strcmp(a, "--table") && v)
            cfg.table_path = v;
        else if (!strcmp(a, "--timeout-ms") && v)
            ok = bench_parse_long(v, 1, 3600000, &l), cfg.timeout_ms = (int)l;
        else if (!strcmp(a, "--cuda-device") && v)
            ok = bench_parse_long(v, 0, 1023, &l), cfg.cuda_device = (int)l;
        else {
            takes = false;
            if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                s_usage(stdout);
                return 0;
            }
            ok = false;
        }
        if (!ok) {
            fprintf(stderr, "bench_gpu: bad argument: %s%s%s\n", a, takes ? " " : "", takes ? v : "");
            s_usage(stderr);
            return 2;
        }
        if (takes) i++;
    }
    if (!cfg.endpoint) {
        fprintf(stderr, "bench_gpu: --endpoint is required (a titan-worker started with --device cuda)\n");
        s_usage(stderr);
        return 2;
    }

    /* The GPU first: without one there is nothing to compare against. */
    int ndev = 0;
    cudaError_t ce = cudaGetDeviceCount(&ndev);
    if (ce != cudaSuccess || ndev == 0) {
        fprintf(stderr,
                "bench_gpu: no CUDA device: cudaGetDeviceCount: %s (%s); this bench needs an NVIDIA GPU "
                "and its driver\n",
                ce != cudaSuccess ? cudaGetErrorString(ce) : "0 devices",
                ce != cudaSuccess ? cudaGetErrorName(ce) : "");
        return 2;
    }
    if (cfg.cuda_device >= ndev) {
        fprintf(stderr, "bench_gpu: --cuda-device %d: this machine has %d CUDA device(s)\n", cfg.cuda_device,
                ndev);
        return 2;
    }
    struct cudaDeviceProp prop;
    int drv = 0, rtv = 0, blasv = 0;
    if ((ce = cudaSetDevice(cfg.cuda_device)) != cudaSuccess ||
        (ce = cudaGetDeviceProperties(&prop, cfg.cuda_device)) != cudaSuccess ||
        (ce = cudaDriverGetVersion(&drv)) != cudaSuccess ||
        (ce = cudaRuntimeGetVersion(&rtv)) != cudaSuccess) {
        fprintf(stderr, "bench_gpu: cannot open CUDA device %d: %s (%s)%s\n", cfg.cuda_device,
                cudaGetErrorString(ce), cudaGetErrorName(ce),
                ce == cudaErrorDevicesUnavailable ? "; the GPU is in an exclusive compute mode, so this "
                                                    "process and the worker cannot both use it: "
                                                    "nvidia-smi -c DEFAULT"
                                                  : "");
        return 2;
    }
    cublasStatus_t bs = cublasCreate(&s_blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "bench_gpu: cublasCreate failed: status %d\n", (int)bs);
        return 1;
    }
    cublasGetVersion(s_blas, &blasv);

    titan_client_opts opts;
    titan_client_opts_init(&opts);
    char identity[64];
    snprintf(identity, sizeof identity, "bench_gpu-%ld", (long)getpid());
    opts.identity = identity; /* the resident handles stay this client's across a reconnect */
    opts.timeout_ms = cfg.timeout_ms;
    opts.retries = 0; /* a retry would hide a slow call inside one timing */
    titan_client *client = titan_client_new(cfg.endpoint, &opts);
    if (!client) {
        fprintf(stderr, "bench_gpu: cannot make a client for %s: %s\n", cfg.endpoint, strerror(errno));
        cublasDestroy(s_blas);
        return 1;
    }
    int rc = 1;
    s_row *rows = NULL;
    void *zctx = NULL, *esock = NULL;
    s_echo echo;
    memset(&echo, 0, sizeof echo);
    json_t *machine = NULL;
    titan_gpu_info wi;
    int err = titan_client_gpu_info(client, &wi, NULL);
    if (err < 0) {
        fprintf(stderr, "bench_gpu: gpu_info from %s failed: %s (%s: %s)\n", cfg.endpoint, strerror(-err),
                titan_client_last_code(client), titan_client_last_error(client));
        goto out;
    }
    if (strcmp(wi.backend, "cuda")) {
        fprintf(stderr,
                "bench_gpu: the worker at %s computes on its %s backend (%s): start it with --device cuda\n",
                cfg.endpoint, wi.backend, wi.name);
        goto out;
    }
    printf("bench_gpu: GPU %d: %s (sm %d.%d, %d SMs, %.1f GiB); CUDA driver %d.%d, runtime %d.%d, cuBLAS "
           "%d.%d.%d\n",
           cfg.cuda_device, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
           (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024), drv / 1000, drv % 1000 / 10, rtv / 1000,
           rtv % 1000 / 10, blasv / 10000, blasv % 10000 / 100, blasv % 100);
    printf("bench_gpu: worker %s on %s (%s, sm %s); %s, %d reps after one warm-up\n", cfg.endpoint, wi.name,
           wi.backend, wi.cuda_capability, s_dtype_name(cfg.dtype), cfg.reps);
    if (strcmp(wi.name, prop.name))
        printf("bench_gpu: note: the worker's GPU (%s) is not the one in-process cuBLAS uses (%s): see "
               "--cuda-device\n",
               wi.name, prop.name);
    fflush(stdout);
    char ver[3][32];
    snprintf(ver[0], sizeof ver[0], "%d.%d", drv / 1000, drv % 1000 / 10);
    snprintf(ver[1], sizeof ver[1], "%d.%d", rtv / 1000, rtv % 1000 / 10);
    snprintf(ver[2], sizeof ver[2], "%d.%d.%d", blasv / 10000, blasv % 10000 / 100, blasv % 100);
    char cc[16];
    snprintf(cc, sizeof cc, "%d.%d", prop.major, prop.minor);
    machine = json_pack("{s:s, s:s, s:I, s:i, s:s, s:s, s:s, s:s, s:s, s:s}", "gpu", prop.name, "capability",
                        cc, "memory_bytes", (json_int_t)prop.totalGlobalMem, "sms", prop.multiProcessorCount,
                        "cuda_driver", ver[0], "cuda_runtime", ver[1], "cublas", ver[2], "endpoint",
                        cfg.endpoint, "worker_gpu", wi.name, "worker_backend", wi.backend);

    if (s_echo_start(&echo)) goto out;
    int linger = 0;
    zctx = zmq_ctx_new();
    esock = zctx ? zmq_socket(zctx, ZMQ_DEALER) : NULL;
    if (!esock || zmq_setsockopt(esock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(esock, ZMQ_RCVTIMEO, &cfg.timeout_ms, sizeof cfg.timeout_ms) ||
        zmq_connect(esock, echo.endpoint)) {
        fprintf(stderr, "bench_gpu: cannot connect to the loopback echo %s: %s\n", echo.endpoint,
                zmq_strerror(zmq_errno()));
        goto out;
    }

    rows = calloc((size_t)cfg.nsizes, sizeof *rows);
    if (!rows) {
        fprintf(stderr, "bench_gpu: out of memory\n");
        goto out;
    }
    int done = 0;
    bool failed = false, wrong = false;
    for (int i = 0; i < cfg.nsizes && !failed; i++) {
        s_row *r = &rows[i];
        int n = cfg.sizes[i];
        size_t count = (size_t)n * (size_t)n, bytes = count * s_itemsize(cfg.dtype);
        r->n = n;
        r->bytes_moved = 3 * bytes;
        r->put_ms[0] = r->put_ms[1] = NAN;
        r->rel = r->rel_get = r->maxdiff = r->maxref = NAN;
        void *a = malloc(bytes), *b = malloc(bytes), *ref = malloc(bytes);
        if (!a || !b || !ref) {
            fprintf(stderr, "bench_gpu: n=%d: out of host memory (%zu MB)\n", n, 3 * bytes >> 20);
            failed = true;
        } else {
            s_fill(a, cfg.dtype, count, 1000u + (unsigned)n);
            s_fill(b, cfg.dtype, count, 2000u + (unsigned)n);
            failed = s_bench_inprocess(&cfg, r, a, b, ref) || s_bench_resident(client, &cfg, r, a, b, ref) ||
                     s_bench_service(client, &cfg, r, a, b, ref) || s_bench_echo(esock, &cfg, r, a, b);
        }
        free(a);
        free(b);
        free(ref);
        if (failed) break;
        s_stat *all[] = {&r->gemm, &r->copy_total, &r->copy_h2d, &r->copy_gemm, &r->copy_d2h,
                         &r->res,  &r->res_get,    &r->get,      &r->svc,       &r->echo};
        for (size_t k = 0; k < sizeof all / sizeof *all; k++)
            s_stat_done(all[k]);
        /* Products differ only by summation order: the relative error stays far below this. */
        double tol = cfg.dtype == TITAN_DTYPE_FLOAT64 ? 1e-10 : 1e-4;
        r->ok = r->rel <= tol && r->rel_get <= tol;
        if (!r->ok) {
            fprintf(stderr,
                    "bench_gpu: n=%d: WRONG product: max |titan - cuBLAS| / max |cuBLAS| = %.3g "
                    "(resident + get: %.3g); tolerance %.1g\n",
                    n, r->rel, r->rel_get, tol);
            wrong = true;
        }
        double xfer = r->svc.median - r->gemm.median;
        printf(
            "gpu n=%d dtype=%s cublas_ms=%.4f cublas_gflops=%.0f resident_ms=%.4f resident_ratio=%.3f "
            "resident_get_ms=%.4f copies_ms=%.3f h2d_ms=%.3f copies_gemm_ms=%.4f d2h_ms=%.3f service_ms=%.3f "
            "service_ratio=%.3f transfer_ms=%.3f transfer_gbps=%.2f loopback_ms=%.3f loopback_gbps=%.2f "
            "of_loopback=%.2f put_ms=%.2f,%.2f bytes_moved=%zu max_rel_diff=%.3g check=%s\n",
            n, s_dtype_name(cfg.dtype), r->gemm.median, s_gflops(n, r->gemm.median), r->res.median,
            r->res.median / r->gemm.median, r->res_get.median, r->copy_total.median, r->copy_h2d.median,
            r->copy_gemm.median, r->copy_d2h.median, r->svc.median, r->svc.median / r->copy_total.median,
            xfer, s_gbps(r->bytes_moved, xfer), r->echo.median, s_gbps(r->bytes_moved, r->echo.median),
            s_of_loopback(r), r->put_ms[0], r->put_ms[1], r->bytes_moved, r->rel, r->ok ? "ok" : "WRONG");
        fflush(stdout);
        done++;
    }
    if (done > 0) {
        char gpu[512];
        snprintf(gpu, sizeof gpu, "%s (CUDA driver %s, runtime %s, cuBLAS %s)", prop.name, ver[0], ver[1],
                 ver[2]);
        printf("\n");
        s_tables(stdout, &cfg, rows, done, gpu);
        for (int i = 0; i < done; i++)
            if (rows[i].n == TARGET_N) {
                double ratio = rows[i].res.median / rows[i].gemm.median;
                printf("\ntarget: resident <= %.1fx in-process cuBLAS at n=%d: %.3fx, %s\n", TARGET_RATIO,
                       TARGET_N, ratio, ratio <= TARGET_RATIO ? "met" : "MISSED");
            }
        if (cfg.table_path) {
            FILE *f = fopen(cfg.table_path, "w");
            if (!f) {
                fprintf(stderr, "bench_gpu: cannot write %s: %s\n", cfg.table_path, strerror(errno));
                failed = true;
            } else {
                s_tables(f, &cfg, rows, done, gpu);
                if (fclose(f) != 0) failed = true;
            }
        }
        if (cfg.json_path && s_write_json(cfg.json_path, &cfg, machine, rows, done)) failed = true;
    }
    rc = failed || wrong ? 1 : 0;
out:
    /* Whatever a failure left resident on the worker. */
    if (client) {
        titan_reply *rep = NULL;
        if (titan_client_call(client, "{\"op\":\"tensor_free\",\"all\":true}", NULL, 0, &rep) == 0)
            titan_reply_destroy(&rep);
    }
    if (esock) zmq_close(esock);
    if (zctx) zmq_ctx_term(zctx);
    s_echo_stop(&echo);
    json_decref(machine);
    free(rows);
    titan_client_destroy(&client);
    cublasDestroy(s_blas);
    return rc;
}
