/* test_router.c - libtitan's router (include/titan/router.h) against real titan-worker processes:
 * overflow and failover, capabilities, split products, breaker recovery, local backends, probes, threads.
 * Usage: test_router PATH-TO-TITAN-WORKER */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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
#include <jansson.h>

#include "titan/titan.h"
#include "workerctl.h"

#define MAX_ROUTERS 8
/* Generous: a loaded 2-core CI box with sanitizers must never time out a live worker. */
#define LIVE_TIMEOUT_MS 30000

static char g_tmpdir[256];
/* What a failed test (cmocka longjmps out of it) leaves behind, for its teardown. */
static titan_router *g_routers[MAX_ROUTERS];

/* Starts titan-worker `name` on `bind` ("tcp://127.0.0.1:*" or a fixed endpoint) with --threads 1,
 * --device cpu, --log-level warn and the NULL-terminated `extra` options (workerctl.h). */
static int worker_start(worker *w, const char *name, const char *bind, const char *const *extra)
{
    const char *args[32] = {"--device", "cpu", "--threads", "1", "--log-level", "warn"};
    size_t na = 6;
    for (size_t i = 0; extra && extra[i] && na < sizeof(args) / sizeof(args[0]) - 1; i++)
        args[na++] = extra[i];
    args[na] = NULL;
    return worker_spawn(w, name, bind, args);
}

/* ---- routers ---- */

/* Writes `yaml` to NAME.yaml in the temporary directory and loads it with titan_router_new_from_file;
 * the router is destroyed by the test's teardown if the test fails before it does. */
static titan_router *router_from_yaml(const char *name, const char *yaml)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s.yaml", g_tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(yaml, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    char err[512] = "";
    titan_router *r = titan_router_new_from_file(path, NULL, err, sizeof(err));
    if (!r) fail_msg("titan_router_new_from_file(%s): %s (errno %d)\n--- yaml:\n%s", path, err, errno, yaml);
    if (titan_router_warnings(r)[0]) fail_msg("unexpected warnings: %s", titan_router_warnings(r));
    for (int i = 0; i < MAX_ROUTERS; i++) {
        if (!g_routers[i]) {
            g_routers[i] = r;
            return r;
        }
    }
    fail_msg("too many routers");
    return NULL;
}

static void router_destroy(titan_router **r)
{
    for (int i = 0; i < MAX_ROUTERS; i++)
        if (g_routers[i] == *r) g_routers[i] = NULL;
    titan_router_destroy(r);
}

/* Backend i's status; the call must succeed. */
static titan_backend_status bstatus(titan_router *r, size_t i)
{
    titan_backend_status s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(titan_router_backend_status(r, i, &s), 0);
    return s;
}

/* Per-test teardown: what a failed test left behind. */
static int teardown(void **state)
{
    for (int i = 0; i < MAX_ROUTERS; i++)
        if (g_routers[i]) titan_router_destroy(&g_routers[i]);
    workers_kill_all();
    return 0;
}

/* ---- matrices ---- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A rows x cols matrix of `dt`, malloc'd (abort when out of memory: also called from threads). With
 * `integers`, small whole numbers in [-8, 8], whose products a naive loop computes exactly in either
 * dtype; otherwise uniform values in [-1, 1) with full mantissas. */
static void *make_matrix(titan_dtype dt, size_t rows, size_t cols, bool integers, uint64_t *seed)
{
    size_t count = rows * cols;
    void *p = malloc(count * titan_dtype_size(dt));
    if (!p) abort();
    for (size_t i = 0; i < count; i++) {
        uint64_t x = splitmix64(seed);
        double v = integers ? (double)(int)(x % 17) - 8.0 : 2.0 * ((double)(x >> 11) * 0x1.0p-53) - 1.0;
        if (dt == TITAN_DTYPE_FLOAT32)
            ((float *)p)[i] = (float)v;
        else
            ((double *)p)[i] = v;
    }
    return p;
}

static double elem(titan_dtype dt, const void *p, size_t i)
{
    return dt == TITAN_DTYPE_FLOAT32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

/* Compares got[m x n] with the exact product of the whole-number matrices a and b. Returns 0, or -1 with
 * the first wrong element described in why. */
static int check_exact(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b,
                       const void *got, char *why, size_t cap)
{
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double sum = 0;
            for (size_t p = 0; p < k; p++)
                sum += elem(dt, a, i * k + p) * elem(dt, b, p * n + j);
            double g = elem(dt, got, i * n + j);
            if (g != sum) {
                snprintf(why, cap, "%s %zux%zux%zu: C[%zu][%zu] = %.17g, expected %.17g",
                         titan_dtype_name(dt), m, k, n, i, j, g, sum);
                return -1;
            }
        }
    }
    return 0;
}

/* Fails the test unless got and want (m x n of dt) are the same bytes, naming the first difference. */
static void assert_same_bytes(const char *what, titan_dtype dt, size_t m, size_t n, const void *got,
                              const void *want)
{
    size_t es = titan_dtype_size(dt);
    if (memcmp(got, want, m * n * es) == 0) return;
    size_t ndiff = 0, first = SIZE_MAX;
    for (size_t i = 0; i < m * n; i++) {
        if (memcmp((const char *)got + i * es, (const char *)want + i * es, es) != 0) {
            if (first == SIZE_MAX) first = i;
            ndiff++;
        }
    }
    fail_msg("%s (%s): %zu of %zu elements differ; first C[%zu][%zu] = %.17g, expected %.17g", what,
             titan_dtype_name(dt), ndiff, m * n, first / n, first % n, elem(dt, got, first),
             elem(dt, want, first));
}

/* Fails the test unless got agrees with want (m x n of dt, inner dimension k) within the tolerance that
 * `titan matmul --check` applies (titan_matmul_tolerance): for results of different code paths, whose
 * rounding depends on OpenBLAS's kernel, blocking and thread count. Prints how many elements differ. */
static void assert_close(const char *what, titan_dtype dt, size_t m, size_t k, size_t n, const void *got,
                         const void *want)
{
    double max_abs = 0, rel = titan_matmul_rel_error(dt, m * n, got, want, &max_abs);
    double tol = titan_matmul_tolerance(dt, k);
    size_t es = titan_dtype_size(dt), ndiff = 0;
    for (size_t i = 0; i < m * n; i++)
        ndiff += memcmp((const char *)got + i * es, (const char *)want + i * es, es) != 0;
    if (!(rel <= tol))
        fail_msg("%s (%s): relative error %.3g over the tolerance %.3g (max abs %.3g; %zu of %zu elements differ)",
                 what, titan_dtype_name(dt), rel, tol, max_abs, ndiff, m * n);
    print_message("# %s (%s): %zu of %zu elements differ, relative error %.3g (tolerance %.3g)\n", what,
                  titan_dtype_name(dt), ndiff, m * n, rel, tol);
}

/* A product computed by the worker at `endpoint` through a plain client (no router). */
static void *direct_matmul(const char *endpoint, titan_dtype dt, size_t m, size_t k, size_t n, const void *a,
                           const void *b)
{
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = LIVE_TIMEOUT_MS;
    o.retries = 0;
    titan_client *c = titan_client_new(endpoint, &o);
    assert_non_null(c);
    void *out = NULL;
    int rc = titan_client_matmul(c, dt, m, k, n, a, b, &out);
    if (rc)
        fail_msg("direct matmul on %s: %d %s: %s", endpoint, rc, titan_client_last_code(c),
                 titan_client_last_error(c));
    titan_client_destroy(&c);
    return out;
}

/* The "code" of an error reply header, or "" for a result (into code[cap]). */
static void reply_code(const titan_reply *rep, char *code, size_t cap)
{
    json_t *root = json_loads(titan_reply_header(rep), 0, NULL);
    const char *c = json_string_value(json_object_get(root, "code"));
    snprintf(code, cap, "%s", c ? c : "");
    json_decref(root);
}

/* ---- routed work from several threads ---- */

/* One thread's routed products; cmocka asserts are not thread-safe, so failures are recorded here and
 * asserted by the main thread. */
typedef struct {
    titan_router *r;
    int id, calls;
    pthread_barrier_t *barrier;
    int done;
    int by_backend[8];
    int max_skipped_busy, max_skipped_failed, max_tried;
    char failure[768];
} routed_job;

static void *routed_job_run(void *arg)
{
    routed_job *j = arg;
    uint64_t seed = 0xC0FFEE00u + (uint64_t)j->id * 104729u;
    pthread_barrier_wait(j->barrier);
    for (int i = 0; i < j->calls; i++) {
        titan_dtype dt = (j->id + i) % 2 ? TITAN_DTYPE_FLOAT32 : TITAN_DTYPE_FLOAT64;
        size_t m = 1 + splitmix64(&seed) % 40, k = 1 + splitmix64(&seed) % 40, n = 1 + splitmix64(&seed) % 40;
        void *a = make_matrix(dt, m, k, true, &seed), *b = make_matrix(dt, k, n, true, &seed), *out = NULL;
        titan_route_info info;
        memset(&info, 0x5a, sizeof(info)); /* every field must be written */
        int rc = titan_router_matmul(j->r, dt, m, k, n, a, b, &out, &info);
        char why[256] = "";
        if (rc != 0)
            snprintf(j->failure, sizeof(j->failure),
                     "thread %d call %d: titan_router_matmul %zux%zux%zu: %d: %s", j->id, i, m, k, n, rc,
                     info.error);
        else if (check_exact(dt, m, k, n, a, b, out, why, sizeof(why)) != 0)
            snprintf(j->failure, sizeof(j->failure), "thread %d call %d (backend %d): %s", j->id, i,
                     info.backend, why);
        else if (info.backend < 0 || info.backend >= 8 || info.tried < 1 || info.error[0] || info.nparts != 0)
            snprintf(
                j->failure, sizeof(j->failure),
                "thread %d call %d: route info of a success: backend %d tried %d nparts %d error \"%.200s\"",
                j->id, i, info.backend, info.tried, info.nparts, info.error);
        free(a);
        free(b);
        free(out);
        if (j->failure[0]) return NULL;
        j->by_backend[info.backend]++;
        if (info.skipped_busy > j->max_skipped_busy) j->max_skipped_busy = info.skipped_busy;
        if (info.skipped_failed > j->max_skipped_failed) j->max_skipped_failed = info.skipped_failed;
        if (info.tried > j->max_tried) j->max_tried = info.tried;
        j->done++;
    }
    return NULL;
}

/* Runs nthreads x calls routed products on r at once. Fills *sum with the totals (by_backend summed, the
 * max_ fields maximized) and the first failure; asserts nothing, so that a caller with threads of its
 * own running can stop them before it does. */
static void run_routed_jobs(titan_router *r, int nthreads, int calls, routed_job *sum)
{
    routed_job jobs[16];
    pthread_t th[16];
    pthread_barrier_t barrier;
    memset(sum, 0, sizeof(*sum));
    if (nthreads > 16 || pthread_barrier_init(&barrier, NULL, (unsigned)nthreads) != 0) {
        snprintf(sum->failure, sizeof(sum->failure), "cannot set up %d threads", nthreads);
        return;
    }
    for (int i = 0; i < nthreads; i++) {
        jobs[i] = (routed_job){.r = r, .id = i, .calls = calls, .barrier = &barrier};
        /* The others would wait at the barrier for a thread that cannot start: give up at once. */
        if (pthread_create(&th[i], NULL, routed_job_run, &jobs[i]) != 0) abort();
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < nthreads; i++) {
        if (jobs[i].failure[0] && !sum->failure[0])
            snprintf(sum->failure, sizeof(sum->failure), "%s", jobs[i].failure);
        if (jobs[i].done != calls && !sum->failure[0])
            snprintf(sum->failure, sizeof(sum->failure), "thread %d did %d of %d calls", i, jobs[i].done,
                     calls);
        sum->done += jobs[i].done;
        for (int b = 0; b < 8; b++)
            sum->by_backend[b] += jobs[i].by_backend[b];
        if (jobs[i].max_skipped_busy > sum->max_skipped_busy)
            sum->max_skipped_busy = jobs[i].max_skipped_busy;
        if (jobs[i].max_skipped_failed > sum->max_skipped_failed)
            sum->max_skipped_failed = jobs[i].max_skipped_failed;
        if (jobs[i].max_tried > sum->max_tried) sum->max_tried = jobs[i].max_tried;
    }
}

/* ---- 1. overflow and failover ---- */

/* Keeps a worker with one executor and no queue occupied with large products, so that it answers busy. */
typedef struct {
    const char *endpoint;
    atomic_bool stop;
    atomic_int products; /* finished */
    int busy;            /* its own requests that found the worker busy */
    char failure[512];
} hog;

static void *hog_run(void *arg)
{
    hog *h = arg;
    const size_t dim = 1500;
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = 120000;
    o.retries = 0;
    titan_client *c = titan_client_new(h->endpoint, &o);
    float *a = calloc(dim * dim, sizeof(float)), *b = calloc(dim * dim, sizeof(float));
    float *out = malloc(dim * dim * sizeof(float));
    if (!c || !a || !b || !out) {
        snprintf(h->failure, sizeof(h->failure), "hog: out of memory");
        goto out;
    }
    for (size_t i = 0; i < dim * dim; i++)
        a[i] = b[i] = (float)(i % 7);
    while (!atomic_load(&h->stop)) {
        void *p = out;
        int rc = titan_client_matmul(c, TITAN_DTYPE_FLOAT32, dim, dim, dim, a, b, &p);
        if (rc == 0) {
            atomic_fetch_add(&h->products, 1);
        } else if (rc == -EREMOTEIO && strcmp(titan_client_last_code(c), "busy") == 0) {
            h->busy++; /* a routed request holds the executor: try again at once */
        } else {
            snprintf(h->failure, sizeof(h->failure), "hog: matmul %zu^3: %d %s: %s", dim, rc,
                     titan_client_last_code(c), titan_client_last_error(c));
            break;
        }
    }
out:
    free(a);
    free(b);
    free(out);
    titan_client_destroy(&c);
    return NULL;
}

/* W1 (priority 1, one executor, --queue 0) is kept busy by a direct client, W3 (priority 2) was killed,
 * W2 (priority 3) is healthy: 48 routed products from 8 threads all succeed, overflowing past W1 and
 * failing over past W3. */
static void test_overflow_and_failover(void **state)
{
    worker w1, w2, w3;
    const char *w1_opts[] = {"--queue", "0", "--blas-threads", "1", NULL};
    assert_int_equal(worker_start(&w1, "ovf-w1", "tcp://127.0.0.1:*", w1_opts), 0);
    assert_int_equal(worker_start(&w2, "ovf-w2", "tcp://127.0.0.1:*", NULL), 0);
    assert_int_equal(worker_start(&w3, "ovf-w3", "tcp://127.0.0.1:*", NULL), 0);
    worker_stop(&w3, SIGKILL);

    char yaml[2048];
    /* File order w1, w2, w3 (the status indexes); priority order w1, w3, w2. A long cool-down keeps W3's
     * breaker open until the end. */
    snprintf(yaml, sizeof(yaml),
             "router:\n"
             "  breaker_failures: 1\n"
             "  breaker_cooldown_ms: 600000\n"
             "  breaker_max_cooldown_ms: 600000\n"
             "backends:\n"
             "  w1:\n    type: remote\n    endpoint: \"%s\"\n    priority: 1\n    timeout_ms: %d\n"
             "  w2:\n    type: remote\n    endpoint: \"%s\"\n    priority: 3\n    timeout_ms: %d\n"
             "  w3:\n    type: remote\n    endpoint: \"%s\"\n    priority: 2\n    timeout_ms: 500\n",
             w1.endpoint, LIVE_TIMEOUT_MS, w2.endpoint, LIVE_TIMEOUT_MS, w3.endpoint);
    titan_router *r = router_from_yaml("overflow", yaml);
    assert_int_equal(titan_router_backend_count(r), 3);

    hog h = {.endpoint = w1.endpoint};
    pthread_t hog_th;
    assert_int_equal(pthread_create(&hog_th, NULL, hog_run, &h), 0);
    /* Once one product is done the hog is sending the next, so W1 is occupied from here on. */
    int64_t deadline = now_ms() + 60000;
    while (atomic_load(&h.products) < 1 && !h.failure[0] && now_ms() < deadline)
        sleep_ms(5);
    routed_job sum;
    memset(&sum, 0, sizeof(sum));
    bool hog_ready = atomic_load(&h.products) >= 1;
    if (hog_ready) run_routed_jobs(r, 8, 6, &sum);
    atomic_store(&h.stop, true);
    pthread_join(hog_th, NULL);
    if (h.failure[0]) fail_msg("%s", h.failure);
    assert_true(hog_ready);
    if (sum.failure[0]) fail_msg("%s", sum.failure);

    titan_backend_status s1 = bstatus(r, 0), s2 = bstatus(r, 1), s3 = bstatus(r, 2);
    print_message("# overflow: w1 ok %" PRIu64 " busy %" PRIu64 ", w2 ok %" PRIu64 ", w3 failures %" PRIu64
                  " (%s); hog %d products, %d busy\n",
                  s1.ok, s1.busy, s2.ok, s3.failures, titan_breaker_state_name(s3.state),
                  atomic_load(&h.products), h.busy);
    assert_int_equal(sum.done, 48);
    assert_true(s1.busy > 0);     /* W1 answered busy: the requests overflowed */
    assert_true(s2.ok > 0);       /* ... to W2 */
    assert_true(s3.failures > 0); /* W3, tried before W2, did not answer */
    assert_int_equal(s3.state, TITAN_BREAKER_OPEN);
    assert_int_equal(s3.ok, 0);
    assert_true(strstr(s3.last_error, w3.endpoint) != NULL);
    assert_int_equal(sum.by_backend[2], 0);
    assert_int_equal(sum.by_backend[0] + sum.by_backend[1], 48);
    assert_int_equal((int)s1.ok, sum.by_backend[0]);
    assert_int_equal((int)s2.ok, sum.by_backend[1]);
    assert_true(sum.max_skipped_busy > 0);
    assert_true(sum.max_skipped_failed > 0);
    assert_true(sum.max_tried >= 2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bstatus(r, (size_t)i).inflight, 0);
    /* Every request went to W1 first, busy or not: requests = ok + busy there. */
    assert_int_equal(s1.requests, s1.ok + s1.busy);
    assert_int_equal(s1.failures, 0);
    assert_int_equal(s2.failures, 0);

    router_destroy(&r);
    worker_stop(&w1, SIGTERM);
    worker_stop(&w2, SIGTERM);
}

/* ---- 2. capabilities ---- */

static void test_capabilities(void **state)
{
    worker wa, wb;
    assert_int_equal(worker_start(&wa, "cap-a", "tcp://127.0.0.1:*", NULL), 0);
    assert_int_equal(worker_start(&wb, "cap-b", "tcp://127.0.0.1:*", NULL), 0);
    char yaml[2048];
    /* b comes first in priority, so that only the capability filter keeps products away from it. */
    snprintf(yaml, sizeof(yaml),
             "backends:\n"
             "  a:\n    type: remote\n    endpoint: \"%s\"\n    capabilities: [matrix_ops]\n"
             "    priority: 2\n    timeout_ms: %d\n"
             "  b:\n    type: remote\n    endpoint: \"%s\"\n    capabilities: [legacy_inference]\n"
             "    priority: 1\n    timeout_ms: %d\n",
             wa.endpoint, LIVE_TIMEOUT_MS, wb.endpoint, LIVE_TIMEOUT_MS);
    titan_router *r = router_from_yaml("caps", yaml);
    titan_backend_status sa = bstatus(r, 0), sb = bstatus(r, 1);
    assert_string_equal(sa.capabilities, "matrix_ops");
    assert_string_equal(sb.capabilities, "legacy_inference");

    uint64_t seed = 11;
    for (int i = 0; i < 3; i++) {
        size_t m = 7 + (size_t)i, k = 5, n = 6;
        void *a = make_matrix(TITAN_DTYPE_FLOAT64, m, k, true, &seed);
        void *b = make_matrix(TITAN_DTYPE_FLOAT64, k, n, true, &seed), *out = NULL;
        titan_route_info info;
        int rc = titan_router_matmul(r, TITAN_DTYPE_FLOAT64, m, k, n, a, b, &out, &info);
        if (rc) fail_msg("matmul: %d %s", rc, info.error);
        assert_int_equal(info.backend, 0);
        assert_int_equal(info.tried, 1);
        char why[256];
        if (check_exact(TITAN_DTYPE_FLOAT64, m, k, n, a, b, out, why, sizeof(why))) fail_msg("%s", why);
        free(a);
        free(b);
        free(out);
    }
    sa = bstatus(r, 0);
    sb = bstatus(r, 1);
    assert_int_equal(sa.requests, 3);
    assert_int_equal(sb.requests, 0);

    /* inference: only b offers it (as legacy_inference); the worker answers unsupported, and with no
     * other backend to ask, that answer is the caller's. */
    titan_reply *rep = NULL;
    titan_route_info info;
    int rc =
        titan_router_call(r, "{\"op\":\"inference\",\"model\":\"m\"}", NULL, 0, "inference", &rep, &info);
    if (rc) fail_msg("inference: %d %s", rc, info.error);
    assert_non_null(rep);
    char code[64];
    reply_code(rep, code, sizeof(code));
    assert_string_equal(code, "unsupported");
    titan_reply_destroy(&rep);
    assert_int_equal(info.backend, 1);
    assert_string_equal(info.error, "");
    /* The same with the capability derived from the op. */
    rc = titan_router_call(r, "{\"op\":\"inference\",\"model\":\"m\"}", NULL, 0, NULL, &rep, &info);
    if (rc) fail_msg("inference (derived capability): %d %s", rc, info.error);
    reply_code(rep, code, sizeof(code));
    assert_string_equal(code, "unsupported");
    titan_reply_destroy(&rep);
    assert_int_equal(info.backend, 1);
    sa = bstatus(r, 0);
    sb = bstatus(r, 1);
    assert_int_equal(sa.requests, 3); /* a was never asked */
    assert_int_equal(sb.requests, 2);

    /* An op that needs nothing goes to the first backend in priority order. */
    rc = titan_router_call(r, "{\"op\":\"ping\"}", NULL, 0, NULL, &rep, &info);
    if (rc) fail_msg("ping: %d %s", rc, info.error);
    reply_code(rep, code, sizeof(code));
    assert_string_equal(code, "");
    titan_reply_destroy(&rep);
    assert_int_equal(info.backend, 1);

    /* A capability nobody offers. */
    rep = NULL;
    rc = titan_router_call(r, "{\"op\":\"ping\"}", NULL, 0, "quantum_annealing", &rep, &info);
    assert_int_equal(rc, -ENOTSUP);
    assert_null(rep);
    assert_int_equal(info.backend, -1);
    if (!strstr(info.error, "quantum_annealing"))
        fail_msg("error does not name the capability: %s", info.error);
    assert_int_equal(bstatus(r, 0).requests + bstatus(r, 1).requests, 3 + 3);
    router_destroy(&r);

    /* A backend without a capability list offers everything. "unsupported" from b is not final while
     * another capable backend (any) may have it: any is asked too, and only when it cannot help either
     * is b's answer (the first) the caller's. */
    snprintf(
        yaml, sizeof(yaml),
        "backends:\n"
        "  b:\n    type: remote\n    endpoint: \"%s\"\n    capabilities: [legacy_inference]\n"
        "    timeout_ms: %d\n"
        "  a:\n    type: remote\n    endpoint: \"%s\"\n    capabilities: [matrix_ops]\n    timeout_ms: %d\n"
        "  any:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n",
        wb.endpoint, LIVE_TIMEOUT_MS, wa.endpoint, LIVE_TIMEOUT_MS, wa.endpoint, LIVE_TIMEOUT_MS);
    r = router_from_yaml("caps-any", yaml);
    assert_string_equal(bstatus(r, 2).capabilities, "");
    rc = titan_router_call(r, "{\"op\":\"inference\",\"model\":\"m\"}", NULL, 0, NULL, &rep, &info);
    if (rc) fail_msg("inference with two capable backends: %d %s", rc, info.error);
    reply_code(rep, code, sizeof(code));
    assert_string_equal(code, "unsupported");
    titan_reply_destroy(&rep);
    assert_int_equal(info.backend, 0);
    assert_int_equal(info.tried, 2);
    assert_int_equal(bstatus(r, 0).requests, 1);
    assert_int_equal(bstatus(r, 1).requests, 0);
    assert_int_equal(bstatus(r, 2).requests, 1);
    /* A capability only "any" offers, by having no list. */
    rc = titan_router_call(r, "{\"op\":\"ping\"}", NULL, 0, "quantum_annealing", &rep, &info);
    if (rc) fail_msg("ping with a capability only 'any' offers: %d %s", rc, info.error);
    titan_reply_destroy(&rep);
    assert_int_equal(info.backend, 2);
    assert_int_equal(info.tried, 1);
    assert_int_equal(bstatus(r, 0).requests + bstatus(r, 1).requests, 1);
    router_destroy(&r);

    worker_stop(&wa, SIGTERM);
    worker_stop(&wb, SIGTERM);
}

/* ---- 3. split products ---- */

#define SPLIT_M 301 /* odd: the two shares are uneven */
#define SPLIT_K 257
#define SPLIT_N 129

/* Checks a split's route info: parts in row order, each with rows, summing to m, on the expected
 * backends (want_backends[0..nparts)). */
static void assert_split_info(const titan_route_info *info, int nparts, const int *want_backends)
{
    if (info->nparts != nparts) fail_msg("nparts %d, expected %d", info->nparts, nparts);
    size_t rows = 0;
    for (int p = 0; p < info->nparts; p++) {
        assert_true(info->part[p].rows > 0);
        assert_int_equal(info->part[p].backend, want_backends[p]);
        rows += info->part[p].rows;
    }
    assert_int_equal(rows, SPLIT_M);
    assert_int_equal(info->backend, -1);
    assert_string_equal(info->error, "");
}

/* Fails unless the rows of each part of a split are the same bytes as the product of those rows of a
 * alone, computed by `r1` (a router whose first backend is the one to compare with). This holds whatever
 * the shares were; the whole product's identity depends on them (see test_split). */
static void assert_parts_exact(const char *what, titan_router *r1, titan_dtype dt, size_t k, size_t n,
                               const void *a, const void *b, const void *got, const titan_route_info *info)
{
    size_t es = titan_dtype_size(dt), row = 0;
    for (int p = 0; p < info->nparts; p++) {
        size_t rows = info->part[p].rows;
        void *want = NULL;
        titan_route_info pi;
        int rc = titan_router_matmul(r1, dt, rows, k, n, (const char *)a + row * k * es, b, &want, &pi);
        if (rc) fail_msg("%s: product of rows %zu..%zu: %d %s", what, row, row + rows - 1, rc, pi.error);
        assert_int_equal(pi.backend, 0);
        char label[256];
        snprintf(label, sizeof(label), "%s, rows %zu..%zu", what, row, row + rows - 1);
        assert_same_bytes(label, dt, rows, n, (const char *)got + row * n * es, want);
        free(want);
        row += rows;
    }
}

/* Splits over two workers (and over a local backend and a worker) agree with the product one worker gives.
 *
 * A split's rows are computed in parts of other row counts than the whole product, and OpenBLAS rounds by
 * its kernel (OPENBLAS_CORETYPE), blocking (OPENBLAS_L2_SIZE), thread count and row count. So a split is
 * compared with the whole product within titan_matmul_tolerance, the tolerance of `titan matmul --check`
 * (tests/run.sh runs this test under two OpenBLAS settings). What is exact is each part: the rows of a
 * part are the same bytes as the product of those rows alone on the same backend (same code path). */
static void test_split(void **state)
{
    worker w1, w2;
    const char *one_blas[] = {"--blas-threads", "1", NULL};
    assert_int_equal(worker_start(&w1, "split-w1", "tcp://127.0.0.1:*", one_blas), 0);
    assert_int_equal(worker_start(&w2, "split-w2", "tcp://127.0.0.1:*", one_blas), 0);
    char yaml[2048], only_w1[1024], local_yaml[1024], only_local[256];
    /* w2 is the one killed later: a short timeout, so that its part fails over quickly. */
    snprintf(yaml, sizeof(yaml),
             "router: {breaker_cooldown_ms: 600000, breaker_max_cooldown_ms: 600000}\n"
             "backends:\n"
             "  w1:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n"
             "  w2:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: 2000\n",
             w1.endpoint, LIVE_TIMEOUT_MS, w2.endpoint);
    snprintf(only_w1, sizeof(only_w1),
             "backends:\n  w1:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n", w1.endpoint,
             LIVE_TIMEOUT_MS);
    snprintf(local_yaml, sizeof(local_yaml),
             "backends:\n"
             "  cpu: {type: local, device: cpu}\n"
             "  w1:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n",
             w1.endpoint, LIVE_TIMEOUT_MS);
    snprintf(only_local, sizeof(only_local), "backends:\n  cpu: {type: local, device: cpu}\n");
    titan_router *r1 = router_from_yaml("split-only-w1", only_w1);
    titan_router *rcpu = router_from_yaml("split-only-local", only_local);

    const size_t m = SPLIT_M, k = SPLIT_K, n = SPLIT_N;
    const titan_dtype dts[2] = {TITAN_DTYPE_FLOAT32, TITAN_DTYPE_FLOAT64};
    void *a[2], *b[2], *ref[2];
    uint64_t seed = 2024;
    for (int d = 0; d < 2; d++) {
        titan_dtype dt = dts[d];
        size_t es = titan_dtype_size(dt);
        a[d] = make_matrix(dt, m, k, false, &seed);
        b[d] = make_matrix(dt, k, n, false, &seed);
        ref[d] = direct_matmul(w1.endpoint, dt, m, k, n, a[d], b[d]);
        void *other = direct_matmul(w2.endpoint, dt, m, k, n, a[d], b[d]);
        assert_same_bytes("direct product on w2 vs w1", dt, m, n, other, ref[d]);
        free(other);

        /* A fresh router: nothing measured yet, so the weights (1:1) divide the rows. */
        titan_router *r = router_from_yaml("split", yaml);
        titan_route_info info;
        void *split = malloc(m * n * es);
        assert_non_null(split);
        memset(split, 0xff, m * n * es); /* written in place: every row must be overwritten */
        int rc = titan_router_matmul_split(r, dt, m, k, n, a[d], b[d], &split, &info);
        if (rc) fail_msg("titan_router_matmul_split: %d %s", rc, info.error);
        assert_split_info(&info, 2, (const int[]){0, 1});
        assert_int_equal(info.tried, 2);
        /* 1:1 over 5 blocks of 64 rows: split points fall on a block boundary */
        assert_true(info.part[0].rows == 192 || info.part[0].rows == 128);
        assert_int_equal(info.part[0].rows + info.part[1].rows, m);
        assert_close("split over two workers vs direct", dt, m, k, n, split, ref[d]);

        void *single = NULL;
        rc = titan_router_matmul(r, dt, m, k, n, a[d], b[d], &single, &info);
        if (rc) fail_msg("titan_router_matmul: %d %s", rc, info.error);
        assert_int_equal(info.backend, 0);
        assert_same_bytes("routed product vs direct", dt, m, n, single, ref[d]);
        free(single);
        assert_true(bstatus(r, 0).gflops > 0);
        assert_true(bstatus(r, 1).gflops > 0);

        /* Now divided by measured throughput: whatever the shares, each part's rows are exact. */
        memset(split, 0xff, m * n * es);
        rc = titan_router_matmul_split(r, dt, m, k, n, a[d], b[d], &split, &info);
        if (rc) fail_msg("titan_router_matmul_split (measured): %d %s", rc, info.error);
        size_t rows = 0;
        for (int p = 0; p < info.nparts; p++)
            rows += info.part[p].rows;
        assert_int_equal(rows, m);
        assert_parts_exact("split by measured throughput", r1, dt, k, n, a[d], b[d], split, &info);
        free(split);
        router_destroy(&r);

        /* With a local CPU backend as one of the parts (a fresh router again: 1:1). */
        titan_router *rl = router_from_yaml("split-local", local_yaml);
        split = NULL;
        rc = titan_router_matmul_split(rl, dt, m, k, n, a[d], b[d], &split, &info);
        if (rc) fail_msg("split with a local backend: %d %s", rc, info.error);
        assert_split_info(&info, 2, (const int[]){0, 1});
        titan_route_info local_part = info;
        local_part.nparts = 1;
        assert_parts_exact("split's local part vs the local backend alone", rcpu, dt, k, n, a[d], b[d], split,
                           &local_part);
        size_t off = info.part[0].rows;
        titan_route_info remote_part = {.nparts = 1, .part = {{1, info.part[1].rows}}};
        assert_parts_exact("split's remote part vs w1 alone", r1, dt, k, n, (const char *)a[d] + off * k * es,
                           b[d], (const char *)split + off * n * es, &remote_part);
        assert_close("split over local cpu + worker vs direct", dt, m, k, n, split, ref[d]);
        free(split);
        router_destroy(&rl);
    }

    /* w2 dies after the router heard from it (a probe), so it still counts as healthy: its part fails,
     * is routed again, and w1 computes it. */
    titan_router *r = router_from_yaml("split", yaml);
    assert_int_equal(titan_router_probe(r), 2);
    worker_stop(&w2, SIGKILL);
    titan_route_info info;
    void *split = NULL;
    int rc = titan_router_matmul_split(r, TITAN_DTYPE_FLOAT64, m, k, n, a[1], b[1], &split, &info);
    if (rc) fail_msg("split with w2 dead: %d %s", rc, info.error);
    assert_split_info(&info, 2, (const int[]){0, 1});
    assert_int_equal(info.skipped_failed, 1);
    assert_int_equal(info.tried, 3);
    assert_close("split with a part failed over vs direct", TITAN_DTYPE_FLOAT64, m, k, n, split, ref[1]);
    free(split);
    titan_backend_status s2 = bstatus(r, 1);
    assert_int_equal(s2.failures, 1);
    assert_int_equal(s2.ok, 0);
    assert_true(strstr(s2.last_error, w2.endpoint) != NULL);
    assert_int_equal(bstatus(r, 0).ok, 2);
    router_destroy(&r);

    /* A new router has never heard from w2: its probe finds w2 dead, and the split leaves it out. */
    r = router_from_yaml("split", yaml);
    split = NULL;
    rc = titan_router_matmul_split(r, TITAN_DTYPE_FLOAT32, m, k, n, a[0], b[0], &split, &info);
    if (rc) fail_msg("split with w2 known dead: %d %s", rc, info.error);
    assert_split_info(&info, 1, (const int[]){0});
    assert_same_bytes("split without the dead worker vs direct", TITAN_DTYPE_FLOAT32, m, n, split, ref[0]);
    free(split);
    s2 = bstatus(r, 1);
    assert_int_equal(s2.probes, 1);
    assert_int_equal(s2.requests, 0);
    assert_int_equal(s2.state, TITAN_BREAKER_OPEN);

    for (int d = 0; d < 2; d++) {
        free(a[d]);
        free(b[d]);
        free(ref[d]);
    }
    router_destroy(&r);
    router_destroy(&r1);
    router_destroy(&rcpu);
    worker_stop(&w1, SIGTERM);
}

/* ---- 4. breaker recovery ---- */

/* One small routed product; it must succeed exactly. Returns the backend that answered. */
static int routed_small(titan_router *r, uint64_t *seed, titan_route_info *info)
{
    void *a = make_matrix(TITAN_DTYPE_FLOAT64, 4, 3, true, seed);
    void *b = make_matrix(TITAN_DTYPE_FLOAT64, 3, 5, true, seed), *out = NULL;
    int rc = titan_router_matmul(r, TITAN_DTYPE_FLOAT64, 4, 3, 5, a, b, &out, info);
    if (rc) fail_msg("titan_router_matmul: %d %s", rc, info->error);
    char why[256];
    if (check_exact(TITAN_DTYPE_FLOAT64, 4, 3, 5, a, b, out, why, sizeof(why))) fail_msg("%s", why);
    free(a);
    free(b);
    free(out);
    return info->backend;
}

static void test_breaker_recovery(void **state)
{
    worker w1, w2;
    assert_int_equal(worker_start(&w1, "brk-w1", "tcp://127.0.0.1:*", NULL), 0);
    assert_int_equal(worker_start(&w2, "brk-w2", "tcp://127.0.0.1:*", NULL), 0);
    char w1_endpoint[256]; /* fixed from here on: w1 comes back on the same port */
    snprintf(w1_endpoint, sizeof(w1_endpoint), "%s", w1.endpoint);
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "router: {breaker_failures: 1, breaker_cooldown_ms: 200, breaker_max_cooldown_ms: 400}\n"
             "backends:\n"
             "  w1:\n    type: remote\n    endpoint: \"%s\"\n    priority: 1\n    timeout_ms: 2000\n"
             "  w2:\n    type: remote\n    endpoint: \"%s\"\n    priority: 2\n    timeout_ms: %d\n",
             w1_endpoint, w2.endpoint, LIVE_TIMEOUT_MS);
    titan_router *r = router_from_yaml("breaker", yaml);
    uint64_t seed = 5;
    titan_route_info info;
    assert_int_equal(routed_small(r, &seed, &info), 0);
    assert_int_equal(bstatus(r, 0).state, TITAN_BREAKER_CLOSED);

    /* w1 dies: the next request times out there (one failure opens it) and goes to w2. */
    worker_stop(&w1, SIGKILL);
    assert_int_equal(routed_small(r, &seed, &info), 1);
    assert_int_equal(info.tried, 2);
    assert_int_equal(info.skipped_failed, 1);
    titan_backend_status s1 = bstatus(r, 0);
    assert_int_equal(s1.failures, 1);
    assert_int_equal(s1.probes, 0);
    /* Open; once its 200 ms have passed the status says half-open, which a slow machine may see here. */
    if (s1.state != TITAN_BREAKER_OPEN && s1.state != TITAN_BREAKER_HALF_OPEN)
        fail_msg("w1 is %s after it failed, expected open", titan_breaker_state_name(s1.state));
    assert_true(strstr(s1.last_error, w1_endpoint) != NULL);
    assert_true(s1.last_error_ms > 0);

    /* After the cool-down, the next request probes w1 first; the probe fails and w2 answers. */
    sleep_ms(300);
    assert_int_equal(bstatus(r, 0).state, TITAN_BREAKER_HALF_OPEN);
    assert_int_equal(routed_small(r, &seed, &info), 1);
    s1 = bstatus(r, 0);
    assert_int_equal(s1.probes, 1);
    assert_int_equal(s1.failures, 2);
    assert_int_equal(s1.requests, 2); /* the probe is not a request */
    assert_true(info.skipped_failed >= 1);

    /* w1 comes back on the same port: after the (doubled) cool-down a probe finds it, and it serves
     * again. Retried until it does, because a probe on a loaded machine may still miss the fresh worker. */
    assert_int_equal(worker_start(&w1, "brk-w1", w1_endpoint, NULL), 0);
    assert_string_equal(w1.endpoint, w1_endpoint);
    int served = -1;
    int64_t deadline = now_ms() + 30000;
    while (served != 0 && now_ms() < deadline) {
        sleep_ms(450); /* > breaker_max_cooldown_ms */
        served = routed_small(r, &seed, &info);
    }
    s1 = bstatus(r, 0);
    if (served != 0)
        fail_msg("w1 never served again after its restart (state %s, probes %" PRIu64 ", last error %s)",
                 titan_breaker_state_name(s1.state), s1.probes, s1.last_error);
    assert_int_equal(s1.state, TITAN_BREAKER_CLOSED);
    assert_true(s1.probes >= 2);
    assert_true(s1.ok >= 2);
    /* Closed: the next request goes straight to w1, with no probe. */
    uint64_t probes = s1.probes;
    assert_int_equal(routed_small(r, &seed, &info), 0);
    assert_int_equal(info.tried, 1);
    assert_int_equal(info.skipped_failed, 0);
    assert_int_equal(bstatus(r, 0).probes, probes);

    router_destroy(&r);
    worker_stop(&w1, SIGTERM);
    worker_stop(&w2, SIGTERM);
}

/* ---- 5. local backends ---- */

static void test_local_backends(void **state)
{
    titan_router *r = router_from_yaml("local-cpu", "backends:\n  cpu: {type: local, device: cpu}\n");
    titan_backend_status s = bstatus(r, 0);
    assert_int_equal(s.type, TITAN_ROUTE_LOCAL);
    assert_string_equal(s.endpoint, "");
    assert_int_equal(s.max_inflight, 1);
    uint64_t seed = 77;
    titan_route_info info;
    assert_int_equal(routed_small(r, &seed, &info), 0);
    assert_int_equal(info.tried, 1);
    s = bstatus(r, 0);
    assert_int_equal(s.ok, 1);
    assert_int_equal(s.state, TITAN_BREAKER_CLOSED);
    assert_true(s.p50_ms >= 0);
    router_destroy(&r);

    /* cuda:0 cannot open in a build without CUDA: its requests go to the next backend. */
    worker w;
    assert_int_equal(worker_start(&w, "local-next", "tcp://127.0.0.1:*", NULL), 0);
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "router: {breaker_failures: 1, breaker_cooldown_ms: 600000, breaker_max_cooldown_ms: 600000}\n"
             "backends:\n"
             "  gpu: {type: local, device: \"cuda:0\"}\n"
             "  next:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n",
             w.endpoint, LIVE_TIMEOUT_MS);
    r = router_from_yaml("local-cuda", yaml);
    int served = routed_small(r, &seed, &info);
    if (served == 0) skip(); /* this build has CUDA and a GPU: nothing to fail over from */
    assert_int_equal(served, 1);
    assert_int_equal(info.skipped_failed, 1);
    s = bstatus(r, 0);
    assert_int_equal(s.state, TITAN_BREAKER_OPEN);
    assert_int_equal(s.failures, 1);
    assert_int_equal(s.ok, 0);
    if (!strstr(s.last_error, "CUDA"))
        fail_msg("gpu's last error does not mention CUDA: \"%s\"", s.last_error);
    /* Open: the next request passes it over without trying it. */
    assert_int_equal(routed_small(r, &seed, &info), 1);
    assert_int_equal(info.tried, 1);
    assert_int_equal(info.skipped_failed, 1);
    assert_int_equal(bstatus(r, 0).failures, 1);
    assert_int_equal(bstatus(r, 1).ok, 2);
    router_destroy(&r);
    worker_stop(&w, SIGTERM);
}

/* ---- 6. probe ---- */

static void test_probe(void **state)
{
    worker w1, w2, dead;
    assert_int_equal(worker_start(&w1, "probe-w1", "tcp://127.0.0.1:*", NULL), 0);
    assert_int_equal(worker_start(&w2, "probe-w2", "tcp://127.0.0.1:*", NULL), 0);
    assert_int_equal(worker_start(&dead, "probe-dead", "tcp://127.0.0.1:*", NULL), 0);
    worker_stop(&dead, SIGKILL);
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "router: {breaker_cooldown_ms: 600000, breaker_max_cooldown_ms: 600000}\n"
             "backends:\n"
             "  w1:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n"
             "  dead:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: 500\n"
             "  w2:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n"
             "  cpu: {type: local, device: cpu}\n",
             w1.endpoint, LIVE_TIMEOUT_MS, dead.endpoint, w2.endpoint, LIVE_TIMEOUT_MS);
    titan_router *r = router_from_yaml("probe", yaml);
    assert_int_equal(titan_router_probe(r), 3);
    for (size_t i = 0; i < 4; i++) {
        titan_backend_status s = bstatus(r, i);
        assert_int_equal(s.probes, 1);
        assert_int_equal(s.requests, 0);
        if (i == 1) {
            assert_int_equal(s.state, TITAN_BREAKER_OPEN);
            assert_int_equal(s.failures, 1);
            assert_true(s.last_error[0] != '\0');
            assert_true(s.p50_ms < 0);
        } else {
            assert_int_equal(s.state, TITAN_BREAKER_CLOSED);
            assert_int_equal(s.failures, 0);
            assert_true(s.p50_ms >= 0);
        }
    }
    /* One more goes away. */
    worker_stop(&w2, SIGKILL);
    assert_int_equal(titan_router_probe(r), 2);
    assert_int_equal(bstatus(r, 2).state, TITAN_BREAKER_OPEN);
    assert_int_equal(bstatus(r, 0).state, TITAN_BREAKER_CLOSED);
    router_destroy(&r);
    worker_stop(&w1, SIGTERM);
}

/* ---- 7. threads ---- */

static void test_threads(void **state)
{
    worker w1, w2;
    /* A short queue on w1, so that some of the load overflows to w2. */
    const char *w1_opts[] = {"--queue", "2", "--max-client-share", "100", NULL};
    assert_int_equal(worker_start(&w1, "thr-w1", "tcp://127.0.0.1:*", w1_opts), 0);
    assert_int_equal(worker_start(&w2, "thr-w2", "tcp://127.0.0.1:*", NULL), 0);
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "backends:\n"
             "  w1:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n"
             "  w2:\n    type: remote\n    endpoint: \"%s\"\n    timeout_ms: %d\n",
             w1.endpoint, LIVE_TIMEOUT_MS, w2.endpoint, LIVE_TIMEOUT_MS);
    titan_router *r = router_from_yaml("threads", yaml);
    routed_job sum;
    run_routed_jobs(r, 8, 20, &sum);
    if (sum.failure[0]) fail_msg("%s", sum.failure);
    assert_int_equal(sum.done, 160);
    titan_backend_status s1 = bstatus(r, 0), s2 = bstatus(r, 1);
    print_message("# threads: w1 ok %" PRIu64 " busy %" PRIu64 ", w2 ok %" PRIu64 "\n", s1.ok, s1.busy,
                  s2.ok);
    assert_int_equal(sum.by_backend[0] + sum.by_backend[1], 160);
    assert_int_equal(s1.ok, (uint64_t)sum.by_backend[0]);
    assert_int_equal(s2.ok, (uint64_t)sum.by_backend[1]);
    assert_int_equal(s1.failures + s2.failures, 0);
    assert_int_equal(s1.inflight + s2.inflight, 0);
    assert_int_equal(s1.requests, s1.ok + s1.busy);
    router_destroy(&r);
    worker_stop(&w1, SIGTERM);
    worker_stop(&w2, SIGTERM);
}

/* ---- main ---- */

static int group_setup(void **state)
{
    snprintf(g_tmpdir, sizeof(g_tmpdir), "/tmp/titan-test-router-XXXXXX");
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
        cmocka_unit_test_teardown(test_overflow_and_failover, teardown),
        cmocka_unit_test_teardown(test_capabilities, teardown),
        cmocka_unit_test_teardown(test_split, teardown),
        cmocka_unit_test_teardown(test_breaker_recovery, teardown),
        cmocka_unit_test_teardown(test_local_backends, teardown),
        cmocka_unit_test_teardown(test_probe, teardown),
        cmocka_unit_test_teardown(test_threads, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
