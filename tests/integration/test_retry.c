/* test_retry.c - client integration tests against the real titan-worker: retries across a
 * worker restart on the same port, and 32 concurrent clients whose replies must not mix.
 * Usage: test_retry PATH-TO-TITAN-WORKER */
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "titan/titan.h"
#include "workerctl.h"

#define NTHREADS 32
#define NITER 12
#define MAX_DIM 48

static char g_tmpdir[256];

/* Per-test teardown: kills the workers a failed test left running. */
static int kill_live_workers(void **state)
{
    workers_kill_all();
    return 0;
}

/* Starts titan-worker `name` on `bind` with --device cpu, --queue `queue` and --log-level error
 * (workerctl.h). Returns 0 with w filled, or -1 (message printed). */
static int worker_start(worker *w, const char *bind, const char *name, const char *queue)
{
    const char *args[] = {"--device", "cpu", "--queue", queue, "--log-level", "error", NULL};
    return worker_spawn(w, name, bind, args);
}

/* Returns the next value of the splitmix64 stream at *state. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Returns a uniform double in [-1, 1) from *state. */
static double rand_unit(uint64_t *state)
{
    return 2.0 * ((double)(splitmix64(state) >> 11) * 0x1.0p-53) - 1.0;
}

/* Returns element i of a float32 or float64 buffer as a double. */
static double elem(titan_dtype dt, const void *p, size_t i)
{
    return dt == TITAN_DTYPE_FLOAT32 ? ((const float *)p)[i] : ((const double *)p)[i];
}

/* Checks got[m x n] against a naive a[m x k] * b[k x n] within the rounding bound
 * 2k*eps*sum|a||b|. Returns 0, or -1 with a description in `why`. */
static int check_product(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b,
                         const void *got, char *why, size_t cap)
{
    double eps = dt == TITAN_DTYPE_FLOAT32 ? (double)FLT_EPSILON : DBL_EPSILON;
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double sum = 0, mag = 0;
            for (size_t p = 0; p < k; p++) {
                double x = elem(dt, a, i * k + p) * elem(dt, b, p * n + j);
                sum += x;
                mag += fabs(x);
            }
            double g = elem(dt, got, i * n + j);
            if (!(fabs(g - sum) <= 2.0 * (double)k * eps * mag + 1e-300)) {
                snprintf(why, cap, "%s %zux%zux%zu: C[%zu][%zu] = %.17g, expected %.17g",
                         titan_dtype_name(dt), m, k, n, i, j, g, sum);
                return -1;
            }
        }
    }
    return 0;
}

/* Allocates and fills an m x k and a k x n matrix of `dt` with values from *state.
 * Aborts when out of memory (cmocka's asserts cannot be used from other threads). */
static void make_inputs(titan_dtype dt, size_t m, size_t k, size_t n, uint64_t *state, void **a, void **b)
{
    size_t es = titan_dtype_size(dt);
    *a = malloc(m * k * es);
    *b = malloc(k * n * es);
    if (!*a || !*b) abort();
    for (size_t i = 0; i < m * k + k * n; i++) {
        void *buf = i < m * k ? *a : *b;
        size_t j = i < m * k ? i : i - m * k;
        double v = rand_unit(state);
        if (dt == TITAN_DTYPE_FLOAT32)
            ((float *)buf)[j] = (float)v;
        else
            ((double *)buf)[j] = v;
    }
}

typedef struct {
    titan_client *c;
    const void *a, *b;
    atomic_int started;
    int rc;
    int retries;
    void *out;
} retry_call;

/* Thread body: one matmul through the client's retry policy. */
static void *retry_call_run(void *arg)
{
    retry_call *rc = arg;
    atomic_store(&rc->started, 1);
    rc->rc = titan_client_matmul(rc->c, TITAN_DTYPE_FLOAT64, 3, 4, 5, rc->a, rc->b, &rc->out);
    rc->retries = titan_client_last_retries(rc->c);
    return NULL;
}

/* Kills the worker while nothing is in flight, starts a call, restarts a worker on
 * the same port while the call is retrying, and expects the call to succeed. */
static void test_retry_across_restart(void **state)
{
    static worker w1, w2;
    assert_int_equal(worker_start(&w1, "tcp://127.0.0.1:*", "restart1", "64"), 0);
    char endpoint[256];
    snprintf(endpoint, sizeof endpoint, "%s", w1.endpoint);

    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 300;
    o.retries = 30;
    titan_client *c = titan_client_new(endpoint, &o);
    assert_non_null(c);
    char *dev = NULL;
    assert_int_equal(titan_client_ping(c, &dev), 0);
    assert_non_null(dev);
    assert_int_equal(titan_client_last_retries(c), 0);
    free(dev);

    worker_stop(&w1, SIGKILL);

    uint64_t seed = 7;
    void *a, *b;
    make_inputs(TITAN_DTYPE_FLOAT64, 3, 4, 5, &seed, &a, &b);
    retry_call call = {.c = c, .a = a, .b = b};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, retry_call_run, &call), 0);
    while (!atomic_load(&call.started))
        sleep_ms(1);
    /* Let at least the first attempt time out, so the answer can only come through a retry. */
    sleep_ms(2 * o.timeout_ms);
    int started = worker_start(&w2, endpoint, "restart2", "64");
    pthread_join(th, NULL);
    assert_int_equal(started, 0);
    assert_string_equal(w2.endpoint, endpoint);

    if (call.rc != 0)
        fail_msg("matmul failed: %d %s (%s)", call.rc, titan_client_last_code(c), titan_client_last_error(c));
    assert_true(call.retries >= 1);
    char why[256];
    if (check_product(TITAN_DTYPE_FLOAT64, 3, 4, 5, a, b, call.out, why, sizeof why) != 0)
        fail_msg("%s", why);

    /* The client goes on normally: the next call needs no retry. */
    assert_int_equal(titan_client_ping(c, NULL), 0);
    assert_int_equal(titan_client_last_retries(c), 0);

    free(call.out);
    free(a);
    free(b);
    titan_client_destroy(&c);
    worker_stop(&w2, SIGTERM);
}

/* SIGTERM after served requests is a clean shutdown, exit 0, within 5 s (the contract). Repeated,
 * because the signal may land on any thread that does not block it (OpenBLAS starts its own). */
static void test_worker_exits_on_sigterm(void **state)
{
    static worker w;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(worker_start(&w, "tcp://127.0.0.1:*", "sigterm", "64"), 0);
        titan_client_opts o = {.timeout_ms = 10000, .retries = 0};
        titan_client *c = titan_client_new(w.endpoint, &o);
        assert_non_null(c);
        double a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, out[4];
        void *pout = out;
        assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT64, 2, 3, 2, a, b, &pout), 0);
        assert_true(out[0] == 4 && out[1] == 5 && out[2] == 10 && out[3] == 11);
        titan_client_destroy(&c);
        int status = worker_stop(&w, SIGTERM);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fail_msg("titan-worker did not exit 0 within 5 s of SIGTERM (round %d, wait status 0x%x)", i,
                     (unsigned)status);
    }
}

typedef struct {
    int id;
    const char *endpoint;
    void *shared_ctx;
    pthread_barrier_t *barrier;
    int ops_done;
    char failure[512];
} mixed_job;

/* Records the first failure of a job thread; returns NULL for the thread to exit. */
static void *job_fail(mixed_job *j, titan_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(j->failure, sizeof j->failure, fmt, ap);
    va_end(ap);
    if (c && n >= 0 && (size_t)n < sizeof j->failure)
        snprintf(j->failure + n, sizeof j->failure - (size_t)n, " [%s: %s]", titan_client_last_code(c),
                 titan_client_last_error(c));
    titan_client_destroy(&c);
    return NULL;
}

/* Thread body: a mix of ping, gpu_info and matmuls of both dtypes with this thread's own
 * sizes and values; every reply is checked. Cmocka asserts are not thread-safe, so failures
 * are recorded in the job and asserted by the main thread. */
static void *mixed_job_run(void *arg)
{
    mixed_job *j = arg;
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 30000;
    o.retries = 0; /* a lost or misrouted reply must show up, not be papered over by a retry */
    o.zmq_ctx = j->shared_ctx;
    titan_client *c = titan_client_new(j->endpoint, &o);
    if (!c) return job_fail(j, NULL, "client %d: titan_client_new: %s", j->id, strerror(errno));
    uint64_t seed = 0x5eed0000u + (uint64_t)j->id * 7919u;
    pthread_barrier_wait(j->barrier);

    for (int i = 0; i < NITER; i++) {
        int op = (j->id + i) % 4;
        if (op == 0) {
            char *dev = NULL;
            int rc = titan_client_ping(c, &dev);
            if (rc != 0 || !dev || !*dev) return job_fail(j, c, "client %d: ping: %d", j->id, rc);
            free(dev);
        } else if (op == 1) {
            titan_gpu_info gi;
            int rc = titan_client_gpu_info(c, &gi, NULL);
            if (rc != 0 || !gi.name[0] || strcmp(gi.backend, "cpu") != 0)
                return job_fail(j, c, "client %d: gpu_info: %d backend \"%s\"", j->id, rc,
                                rc ? "" : gi.backend);
        } else {
            titan_dtype dt = op == 2 ? TITAN_DTYPE_FLOAT32 : TITAN_DTYPE_FLOAT64;
            size_t m = 1 + splitmix64(&seed) % MAX_DIM, k = 1 + splitmix64(&seed) % MAX_DIM;
            size_t n = 1 + splitmix64(&seed) % MAX_DIM;
            void *a, *b, *out = NULL;
            make_inputs(dt, m, k, n, &seed, &a, &b);
            int rc = titan_client_matmul(c, dt, m, k, n, a, b, &out);
            char why[256] = "";
            bool bad = rc != 0 || check_product(dt, m, k, n, a, b, out, why, sizeof why) != 0;
            free(a);
            free(b);
            free(out);
            if (bad) return job_fail(j, c, "client %d: matmul %zux%zux%zu: %d %s", j->id, m, k, n, rc, why);
        }
        j->ops_done++;
    }
    titan_client_destroy(&c);
    return NULL;
}

/* 32 threads, each with its own client (half sharing one ZeroMQ context), send mixed
 * requests at once; every reply must be the right one for its client. */
static void test_concurrent_clients(void **state)
{
    static worker w;
    assert_int_equal(worker_start(&w, "tcp://127.0.0.1:*", "concurrent", "256"), 0);
    void *ctx = zmq_ctx_new();
    assert_non_null(ctx);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, NTHREADS);
    static mixed_job jobs[NTHREADS];
    pthread_t th[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        jobs[i] = (mixed_job){
            .id = i, .endpoint = w.endpoint, .shared_ctx = i % 2 ? ctx : NULL, .barrier = &barrier};
        assert_int_equal(pthread_create(&th[i], NULL, mixed_job_run, &jobs[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    zmq_ctx_term(ctx);
    worker_stop(&w, SIGTERM);
    for (int i = 0; i < NTHREADS; i++) {
        if (jobs[i].failure[0]) fail_msg("%s", jobs[i].failure);
        assert_int_equal(jobs[i].ops_done, NITER);
    }
}

/* Large operands are sent from the caller's memory without a copy. Each call must give
 * them back before it returns, on success and when it gives up mid-send: the buffers are
 * scribbled over and freed at once, which ASan reports if ZeroMQ still reads them. */
static void test_lent_buffers_returned(void **state)
{
    static worker w;
    assert_int_equal(worker_start(&w, "tcp://127.0.0.1:*", "lent", "64"), 0);
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 20000;
    o.retries = 0;
    titan_client *c = titan_client_new(w.endpoint, &o);
    assert_non_null(c);
    uint64_t seed = 99;
    for (int it = 0; it < 20; it++) {
        size_t m = 150 + (size_t)it, k = 130, n = 140; /* 78 KB and more: over the zero-copy threshold */
        void *a, *b, *out = NULL;
        make_inputs(TITAN_DTYPE_FLOAT32, m, k, n, &seed, &a, &b);
        assert_int_equal(titan_client_matmul(c, TITAN_DTYPE_FLOAT32, m, k, n, a, b, &out), 0);
        char why[256];
        if (check_product(TITAN_DTYPE_FLOAT32, m, k, n, a, b, out, why, sizeof why)) fail_msg("%s", why);
        memset(a, 0xff, m * k * 4);
        memset(b, 0xff, k * n * 4);
        free(a);
        free(b);
        free(out);
    }
    titan_client_destroy(&c);
    /* Give up while ZeroMQ is still writing 2 x 32 MiB: the call waits for the buffers. */
    o.timeout_ms = 1;
    c = titan_client_new(w.endpoint, &o);
    assert_non_null(c);
    for (int it = 0; it < 3; it++) {
        size_t dim = 2896; /* 2896^2 floats = 32 MiB */
        float *a = malloc(dim * dim * 4), *b = malloc(dim * dim * 4);
        assert_true(a && b);
        memset(a, 0, dim * dim * 4);
        memset(b, 0, dim * dim * 4);
        void *out = NULL;
        int rc = titan_client_matmul(c, TITAN_DTYPE_FLOAT32, dim, dim, dim, a, b, &out);
        assert_true(rc == -ETIMEDOUT || rc == 0);
        memset(a, 0xff, dim * dim * 4);
        free(a);
        free(b);
        free(out);
    }
    titan_client_destroy(&c);
    worker_stop(&w, SIGTERM);
}

/* Resident tensors through libtitan: put, a kept product, get, free; another client refused. */
static void test_resident_tensors(void **state)
{
    static worker w;
    assert_int_equal(worker_start(&w, "tcp://127.0.0.1:*", "resident", "64"), 0);
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 20000;
    o.identity = "resident-alpha";
    titan_client *c = titan_client_new(w.endpoint, &o);
    assert_non_null(c);
    uint64_t seed = 7;
    size_t m = 70, k = 33, n = 51;
    void *a, *b;
    make_inputs(TITAN_DTYPE_FLOAT64, m, k, n, &seed, &a, &b);
    int64_t sa[2] = {(int64_t)m, (int64_t)k}, sb[2] = {(int64_t)k, (int64_t)n};
    char ra[TITAN_TENSOR_REF_MAX], rb[TITAN_TENSOR_REF_MAX], rc_[TITAN_TENSOR_REF_MAX];
    assert_int_equal(titan_client_tensor_put(c, TITAN_DTYPE_FLOAT64, 2, sa, a, ra), 0);
    assert_int_equal(titan_client_tensor_put(c, TITAN_DTYPE_FLOAT64, 2, sb, b, rb), 0);
    assert_int_equal(strncmp(ra, "t-", 2), 0);
    assert_int_equal(titan_client_matmul_resident(c, ra, rb, rc_), 0);
    titan_dtype dt = TITAN_DTYPE_INVALID;
    int rank = 0;
    int64_t shape[TITAN_MAX_RANK];
    void *out = NULL;
    size_t bytes = 0;
    assert_int_equal(titan_client_tensor_get(c, rc_, &dt, &rank, shape, &out, &bytes), 0);
    assert_int_equal(dt, TITAN_DTYPE_FLOAT64);
    assert_int_equal(rank, 2);
    assert_true(shape[0] == (int64_t)m && shape[1] == (int64_t)n && bytes == m * n * 8);
    char why[256];
    if (check_product(TITAN_DTYPE_FLOAT64, m, k, n, a, b, out, why, sizeof why)) fail_msg("%s", why);
    free(out);
    out = NULL;
    /* Another client (no identity: its own routing id) may not touch them. */
    titan_client_opts_init(&o);
    o.timeout_ms = 20000;
    titan_client *other = titan_client_new(w.endpoint, &o);
    assert_non_null(other);
    assert_int_equal(titan_client_tensor_get(other, ra, NULL, NULL, NULL, &out, NULL), -EREMOTEIO);
    assert_string_equal(titan_client_last_code(other), "unauthorized");
    assert_int_equal(titan_client_tensor_free(other, ra), -EREMOTEIO);
    /* Bad handles never reach the wire. */
    assert_int_equal(titan_client_tensor_free(c, "t-\"}"), -EINVAL);
    assert_int_equal(titan_client_tensor_free(c, ra), 0);
    assert_int_equal(titan_client_tensor_get(c, ra, NULL, NULL, NULL, &out, NULL), -EREMOTEIO);
    assert_string_equal(titan_client_last_code(c), "not_found");
    titan_client_destroy(&other);
    titan_client_destroy(&c);
    free(a);
    free(b);
    assert_int_equal(worker_stop(&w, SIGTERM), 0);
}

/* With an identity, the tensors stay this client's across the reconnect of a retry, and the late
 * replies to the attempts that timed out (which the worker now routes to the new socket) are
 * dropped, not taken for the answer to the next call. */
static void test_identity_survives_retry(void **state)
{
    static worker w;
    assert_int_equal(worker_start(&w, "tcp://127.0.0.1:*", "identity", "64"), 0);
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 20000;
    o.identity = "resident-beta";
    titan_client *c = titan_client_new(w.endpoint, &o);
    assert_non_null(c);
    float x[6] = {1, 2, 3, 4, 5, 6};
    int64_t sx[2] = {2, 3};
    char rx[TITAN_TENSOR_REF_MAX];
    assert_int_equal(titan_client_tensor_put(c, TITAN_DTYPE_FLOAT32, 2, sx, x, rx), 0);
    titan_client_destroy(&c);
    /* A product that outlasts two short attempts on any machine: 2 x 32 MB to send and 16 GFLOP to
     * compute cannot be done in 5 ms (memory bandwidth and the fastest CPUs' dgemm bound it below). */
    o.timeout_ms = 5;
    o.retries = 1;
    c = titan_client_new(w.endpoint, &o);
    assert_non_null(c);
    size_t dim = 2000;
    double *big = calloc(dim * dim, sizeof(double));
    assert_non_null(big);
    for (size_t i = 0; i < dim * dim; i++) big[i] = (double)(i % 7);
    void *out = NULL;
    int rc = titan_client_matmul(c, TITAN_DTYPE_FLOAT64, dim, dim, dim, big, big, &out);
    if (rc == 0) {
        free(out);
        fail_msg("a %zux%zu float64 product came back within two 5 ms attempts", dim, dim);
    }
    assert_int_equal(rc, -ETIMEDOUT);
    assert_int_equal(titan_client_last_retries(c), 1);
    free(big);
    titan_client_destroy(&c);
    /* The same identity from a new client object at once (a restarted process): both abandoned products
     * are still running on the executors, so their replies come to this socket before the answer. */
    o.timeout_ms = 60000;
    o.retries = 0;
    c = titan_client_new(w.endpoint, &o);
    assert_non_null(c);
    /* Its tensor, and the tensor's bytes: not a stale product. */
    void *data = NULL;
    size_t bytes = 0;
    int rank = 0;
    rc = titan_client_tensor_get(c, rx, NULL, &rank, NULL, &data, &bytes);
    if (rc) fail_msg("tensor_get after the retries: %d %s: %s", rc, titan_client_last_code(c), titan_client_last_error(c));
    assert_int_equal(rank, 2);
    assert_int_equal(bytes, sizeof x);
    assert_memory_equal(data, x, sizeof x);
    free(data);
    titan_client_destroy(&c);
    assert_int_equal(worker_stop(&w, SIGTERM), 0);
}

static int group_setup(void **state)
{
    snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/titan-test-retry-XXXXXX");
    return mkdtemp(g_tmpdir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    return workerctl_remove_tmpdir();
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH-TO-TITAN-WORKER\n", argv[0]);
        return 2;
    }
    if (access(argv[1], X_OK) != 0) {
        fprintf(stderr, "%s: cannot run %s: %s\n", argv[0], argv[1], strerror(errno));
        return 2;
    }
    workerctl_init(argv[1], g_tmpdir); /* g_tmpdir is filled by group_setup */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_retry_across_restart, kill_live_workers),
        cmocka_unit_test_teardown(test_concurrent_clients, kill_live_workers),
        cmocka_unit_test_teardown(test_worker_exits_on_sigterm, kill_live_workers),
        cmocka_unit_test_teardown(test_lent_buffers_returned, kill_live_workers),
        cmocka_unit_test_teardown(test_resident_tensors, kill_live_workers),
        cmocka_unit_test_teardown(test_identity_survives_retry, kill_live_workers),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
