/* cuda_check.c - the CUDA backend on a real GPU, against OpenBLAS: one-shot proof for a GPU machine (the
 * device kit, scripts/device-kit.sh, runs it and reads its TAP and its "# gpu_info: {json}" line), and, over
 * the fake CUDA module (tests/fake_cuda), a test of itself on machines without a GPU.
 *
 * It starts titan-worker --device cuda[:N] twice:
 *   1. with TITAN_CUDA_STAGE_KB as given, else 8192 (cuda.c's default, set explicitly so that the
 *      shapes below come from the staging size really in use): gpu_info's device fields (and the
 *      "# gpu_info:" line), two concurrent clients, the pool's steady state, the design's JSON example,
 *      the staging shapes, host and resident operands mixed, and the largest square product (--big) in
 *      both dtypes;
 *   2. with 64 KiB staging buffers, so that modest shapes span many row blocks: two concurrent clients, the
 *      staging shapes, host and resident operands mixed.
 * and then twice more (runs 3 and 4), with --models on two BERT encoder directories that it writes itself
 * (cuda_check_bert.c: a small one, and one of MiniLM-L6's shape, seeded random weights): --device cpu, then the
 * device; each embeds the same inputs of 1 to 128 tokens, and the device's embeddings must equal the CPU's within
 * 1e-4; the MiniLM-shaped encoder's time for 1 x 128 and 32 x 128 tokens on each (median of 5, 1 with --quick) is
 * printed as "# bert_bench: ..." lines, which the device kit's summary tabulates.
 * The staging shapes are computed from the staging size (rows per block = stage / (max(k, n) * element size),
 * as cuda.c's row-block pipeline does): several blocks ending with a partial one, a remainder of one row, an
 * exact multiple, a row exactly one buffer wide, and rows one element wider than a buffer through k and
 * through n (cuda.c's whole-operand fallback). Each line says which case it is. Every product is compared
 * with OpenBLAS's at libtitan's tolerance for its k (titan_matmul_tolerance).
 *
 * A start failure is "not ok", with the worker's log, wherever an NVIDIA GPU is visible (/dev/nvidiaN,
 * /proc/driver/nvidia/gpus/, or a "GPU " line from `nvidia-smi -L`): a missing or unloadable CUDA module (no
 * libcublas), an insufficient driver, a self-test that found wrong results, a worker that never serves. Only
 * where no GPU is visible does it print "1..0 # SKIP why". A worker that dies or stops answering during the
 * checks ends them at once with a "not ok" (and the plan), not after the device kit's time limit.
 *
 * Usage: cuda_check PATH-TO-TITAN-WORKER [--big N] [--device cuda|cuda:N] [--quick]
 *   --big N      the largest square product, float32 and float64 (default 4096; 1024 with --quick)
 *   --device D   the worker's device (default cuda); gpu_info must then say device_index N
 *   --quick      leave out the first run's staging shapes and mixed operands (the 64 KiB run covers the
 *                same code paths) and default --big to 1024
 * Environment:
 *   TITAN_CHECK_GPU_VISIBLE=1|0  take an NVIDIA GPU to be visible, or not, without looking (tests: a start
 *                                failure of the fake module is then "not ok", or a skip)
 *   TITAN_CHECK_START_S=S        how long a worker may take to start serving (default 90; loading cuBLAS)
 *   TITAN_CHECK_CALL_S=S         how long one request may go unanswered (default 120)
 *   TITAN_CUDA_STAGE_KB          the first run's staging size (default 8192)
 *   the rest reaches the worker unchanged (TITAN_CUDA_MODULE, TITAN_NVML_LIBRARY, FAKE_CUDA_*...)
 * Exit status: 0 when every line is ok (or the skip plan); 1 when any is not ok; 2 on a usage error. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>
#include <jansson.h>

#include "titan/titan.h"

#include "cuda_check_bert.h"

#define S_DEFAULT_STAGE_KB 8192 /* cuda.c's S_STAGE_BYTES */
#define S_SMALL_STAGE_KB 64
#define S_LOG_LINES 12

/* TAP output and the counts behind it: lines come from the main thread, the client threads and the watchdog.
 */
static pthread_mutex_t g_tap = PTHREAD_MUTEX_INITIALIZER;
static int g_n, g_failed;
/* The worker now running (0: none), read by the watchdog and the signal handler. */
static atomic_int g_pid;
/* Whether the worker's death is a failure (false while starting it, which reaps it itself, and stopping it).
 */
static atomic_bool g_watch;
/* OpenBLAS's reference products: one at a time, so that two client threads never call it at once. */
static pthread_mutex_t g_blas = PTHREAD_MUTEX_INITIALIZER;
static char g_dir[256], g_ep[256], g_log[300];
static int g_call_s = 120;

static void s_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long s_env_long(const char *name, long dflt, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    long x = strtol(v, &end, 10);
    return *end || x < lo || x > hi ? dflt : x;
}

/* ---- TAP ---- */

static void s_vok_locked(bool cond, const char *fmt, va_list ap)
{
    printf("%sok %d - ", cond ? "" : "not ", ++g_n);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    if (!cond) g_failed++;
}

static void s_ok(bool cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_ok(bool cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&g_tap);
    s_vok_locked(cond, fmt, ap);
    pthread_mutex_unlock(&g_tap);
    va_end(ap);
}

/* The last S_LOG_LINES non-empty lines of the worker's log, as TAP comments, and the very last one in *last.
 */
static void s_log_tail_locked(char *last, size_t cap)
{
    if (cap) last[0] = '\0';
    FILE *f = fopen(g_log, "r");
    if (!f) return;
    /* Its end only: a worker's log can be long, the reason is at the end. */
    if (fseek(f, -16384, SEEK_END) != 0) rewind(f);
    char ring[S_LOG_LINES][512];
    int count = 0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (!line[0]) continue;
        snprintf(ring[count % S_LOG_LINES], sizeof ring[0], "%s", line);
        count++;
    }
    fclose(f);
    int first = count > S_LOG_LINES ? count - S_LOG_LINES : 0;
    if (count) printf("# the worker's log (%s), its end:\n", g_log);
    for (int i = first; i < count; i++)
        printf("#   %s\n", ring[i % S_LOG_LINES]);
    if (count && cap) {
        /* Without the worker's timestamp ("2026-01-02T03:04:05.678Z "): the reason is what matters. */
        const char *l = ring[(count - 1) % S_LOG_LINES];
        if (strlen(l) > 25 && l[4] == '-' && l[10] == 'T' && l[23] == 'Z' && l[24] == ' ') l += 25;
        snprintf(last, cap, "%.400s", l);
    }
    fflush(stdout);
}

/* Ends the whole check now: one "not ok" saying why, the worker's log, the plan; the worker is killed. Used
 * from any thread when the worker died or stopped answering: every later request would only wait as long. */
static void s_abort(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void s_abort(const char *fmt, ...)
{
    pthread_mutex_lock(&g_tap);
    atomic_store(&g_watch, false);
    pid_t p = atomic_exchange(&g_pid, 0);
    if (p > 0) kill(p, SIGKILL);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("not ok %d - %s\n", ++g_n, msg);
    char last[512];
    s_log_tail_locked(last, sizeof last);
    printf("1..%d\n", g_n);
    fflush(stdout);
    _exit(1);
}

/* ---- is there a GPU here? ---- */

/* Runs argv (PATH searched) with stdout captured into out, at most timeout_s. Returns its exit status, -1
 * when it could not run, -2 when it timed out (killed). */
static int s_capture(char *const argv[], int timeout_s, char *out, size_t cap)
{
    out[0] = '\0';
    int fd[2];
    if (pipe(fd) != 0) return -1;
    pid_t p = fork();
    if (p < 0) {
        close(fd[0]);
        close(fd[1]);
        return -1;
    }
    if (p == 0) {
        dup2(fd[1], 1);
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0) dup2(nul, 2);
        close(fd[0]);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fd[1]);
    size_t len = 0;
    double end = s_now() + timeout_s;
    bool timed_out = false;
    for (;;) {
        int left = (int)((end - s_now()) * 1000);
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd pf = {fd[0], POLLIN, 0};
        int r = poll(&pf, 1, left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        char buf[1024];
        ssize_t got = read(fd[0], buf, sizeof buf);
        if (got <= 0) break;
        size_t take = (size_t)got < cap - 1 - len ? (size_t)got : cap - 1 - len;
        memcpy(out + len, buf, take);
        len += take;
        out[len] = '\0';
    }
    close(fd[0]);
    if (timed_out) kill(p, SIGKILL);
    int st = 0;
    while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
    }
    if (timed_out) return -2;
    return WIFEXITED(st) ? (WEXITSTATUS(st) == 127 ? -1 : WEXITSTATUS(st)) : -1;
}

/* Whether an NVIDIA GPU is visible here, and what says so (or what was looked for). A container given one GPU
 * of several sees only its own /dev/nvidiaN, which need not be /dev/nvidia0. */
static bool s_gpu_visible(char *why, size_t cap)
{
    const char *o = getenv("TITAN_CHECK_GPU_VISIBLE");
    if (o && *o) {
        snprintf(why, cap, "TITAN_CHECK_GPU_VISIBLE=%s", o);
        return strcmp(o, "0") != 0;
    }
    DIR *d = opendir("/dev");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            const char *s = e->d_name;
            if (strncmp(s, "nvidia", 6) != 0 || !s[6] || strspn(s + 6, "0123456789") != strlen(s + 6))
                continue;
            snprintf(why, cap, "/dev/%s exists", s);
            closedir(d);
            return true;
        }
        closedir(d);
    }
    d = opendir("/proc/driver/nvidia/gpus");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            snprintf(why, cap, "/proc/driver/nvidia/gpus/%s exists", e->d_name);
            closedir(d);
            return true;
        }
        closedir(d);
    }
    char out[4096];
    char *argv[] = {"nvidia-smi", "-L", NULL};
    int rc = s_capture(argv, 20, out, sizeof out);
    if (rc == -2) {
        /* A driver that hangs nvidia-smi is a GPU machine in trouble: say so loudly rather than skip. */
        snprintf(why, cap, "nvidia-smi -L did not answer within 20 s");
        return true;
    }
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "GPU ", 4) == 0) {
            snprintf(why, cap, "nvidia-smi -L: %.200s", line);
            return true;
        }
    }
    snprintf(why, cap, "no /dev/nvidiaN, no /proc/driver/nvidia/gpus/, %s",
             rc == -1 ? "no nvidia-smi" : "nvidia-smi -L lists no GPU");
    return false;
}

/* ---- the worker ---- */

static void s_on_signal(int sig)
{
    /* Killed for time (the device kit's budget): take the worker along, then die of the same signal. */
    pid_t p = atomic_load(&g_pid);
    if (p > 0) kill(p, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void *s_watchdog(void *arg)
{
    (void)arg;
    for (;;) {
        s_sleep_ms(50);
        pid_t p = atomic_load(&g_pid);
        if (!atomic_load(&g_watch) || p <= 0) continue;
        siginfo_t si;
        memset(&si, 0, sizeof si);
        /* WNOWAIT: only look; s_stop reaps it. */
        if (waitid(P_PID, (id_t)p, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0) continue;
        if (!atomic_load(&g_watch)) continue; /* s_stop stopped it meanwhile */
        if (si.si_code == CLD_EXITED)
            s_abort("the worker exited (status %d) during the checks", si.si_status);
        s_abort("the worker died during the checks: %s (signal %d)", strsignal(si.si_status), si.si_status);
    }
    return NULL;
}

/* Starts the worker; 0 once it wrote its endpoint file, else -1 with why. */
static int s_start(const char *worker, const char *device, const char *models, long stage_kb, int run, char *why,
                   size_t cap)
{
    char epfile[300];
    snprintf(epfile, sizeof epfile, "%s/endpoint-%d", g_dir, run);
    snprintf(g_log, sizeof g_log, "%s/worker-%d.log", g_dir, run);
    int start_s = (int)s_env_long("TITAN_CHECK_START_S", 90, 1, 3600);
    /* Set here, not in the child: setenv allocates, and the child of a threaded process should not. */
    char kb[32];
    snprintf(kb, sizeof kb, "%ld", stage_kb);
    setenv("TITAN_CUDA_STAGE_KB", kb, 1);
    pid_t p = fork();
    if (p < 0) {
        snprintf(why, cap, "fork: %s", strerror(errno));
        return -1;
    }
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* no worker left behind if this check is killed */
        int fd = open(g_log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        const char *args[] = {worker,   "--device", device, "--bind", "tcp://127.0.0.1:*", "--endpoint-file",
                              epfile,   "--threads", "2", "--max-request-bytes", "2G", "--max-result-bytes", "2G",
                              models ? "--models" : NULL, models, NULL};
        execv(worker, (char *const *)args);
        fprintf(stderr, "cuda_check: cannot run %s: %s\n", worker, strerror(errno));
        _exit(127);
    }
    atomic_store(&g_pid, p);
    double end = s_now() + start_s;
    while (s_now() < end) {
        int st;
        if (waitpid(p, &st, WNOHANG) == p) {
            atomic_store(&g_pid, 0);
            if (WIFEXITED(st))
                snprintf(why, cap, "it exited with status %d before serving", WEXITSTATUS(st));
            else
                snprintf(why, cap, "it died before serving: %s", strsignal(WTERMSIG(st)));
            return -1;
        }
        FILE *f = fopen(epfile, "r");
        if (f) {
            bool got = fgets(g_ep, sizeof g_ep, f) != NULL;
            fclose(f);
            if (got && strchr(g_ep, '\n')) {
                g_ep[strcspn(g_ep, "\n")] = '\0';
                atomic_store(&g_watch, true);
                return 0;
            }
        }
        s_sleep_ms(20);
    }
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    atomic_store(&g_pid, 0);
    snprintf(why, cap, "it did not start serving within %d s (killed; TITAN_CHECK_START_S)", start_s);
    return -1;
}

/* Stops the worker with SIGTERM; its exit status, or 128 + the signal. */
static int s_stop(void)
{
    pthread_mutex_lock(&g_tap);
    atomic_store(&g_watch, false);
    pthread_mutex_unlock(&g_tap);
    pid_t p = atomic_load(&g_pid);
    if (p <= 0) return -1;
    int st = -1;
    kill(p, SIGTERM);
    while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
    }
    atomic_store(&g_pid, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static titan_client *s_client(const char *identity)
{
    titan_client_opts o;
    titan_client_opts_init(&o);
    o.timeout_ms = g_call_s * 1000;
    o.retries = 0;
    o.identity = identity;
    titan_client *c = titan_client_new(g_ep, &o);
    if (!c) s_abort("no client for %s: %s", g_ep, strerror(errno));
    return c;
}

/* A request that timed out ends the check: the worker is hung, and each later request would wait as long. */
static void s_check_answered(int rc, const char *what)
{
    if (rc == -ETIMEDOUT)
        s_abort("%s: no answer within %d s (the worker is hung; TITAN_CHECK_CALL_S)", what, g_call_s);
}

/* ---- products ---- */

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

static void *s_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) s_abort("out of host memory (%zu bytes)", bytes);
    return p;
}

/* OpenBLAS's product, for comparison. */
static void *s_cpu(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b)
{
    void *c = s_xmalloc(m * n * titan_dtype_size(dt));
    pthread_mutex_lock(&g_blas);
    if (dt == TITAN_DTYPE_FLOAT32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k, b,
                    (int)n, 0.0f, c, (int)n);
    else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0, a, (int)k, b,
                    (int)n, 0.0, c, (int)n);
    pthread_mutex_unlock(&g_blas);
    return c;
}

/* Whether got matches want at titan_matmul_tolerance(dt, k); res says by how much. */
static bool s_matches(titan_dtype dt, size_t m, size_t k, size_t n, const void *got, const void *want,
                      char *res, size_t cap)
{
    double tol = titan_matmul_tolerance(dt, k);
    double rel = titan_matmul_rel_error(dt, m * n, got, want, NULL);
    snprintf(res, cap, "relative error %.2g, tolerance %.2g", rel, tol);
    return rel <= tol; /* false for NaN */
}

static void s_label(char *buf, size_t cap, titan_dtype dt, size_t m, size_t k, size_t n, const char *why)
{
    snprintf(buf, cap, "%s %zux%zu @ %zux%zu%s%s%s", titan_dtype_name(dt), m, k, k, n,
             why && *why ? " (" : "", why ? why : "", why && *why ? ")" : "");
}

/* One product of host operands (binary frames) against OpenBLAS. */
static void s_product(titan_client *c, titan_dtype dt, size_t m, size_t k, size_t n, uint64_t seed,
                      const char *why)
{
    size_t es = titan_dtype_size(dt);
    void *a = s_xmalloc(m * k * es), *b = s_xmalloc(k * n * es), *got = NULL;
    s_fill(a, dt, m * k, seed);
    s_fill(b, dt, k * n, seed + 1000);
    char label[400], res[128] = "";
    s_label(label, sizeof label, dt, m, k, n, why);
    int rc = titan_client_matmul(c, dt, m, k, n, a, b, &got);
    s_check_answered(rc, label);
    bool ok = false;
    if (rc == 0) {
        void *want = s_cpu(dt, m, k, n, a, b);
        ok = s_matches(dt, m, k, n, got, want, res, sizeof res);
        free(want);
    } else {
        snprintf(res, sizeof res, "%.120s", titan_client_last_error(c));
    }
    s_ok(ok, "%s matches OpenBLAS: %s", label, res);
    free(a);
    free(b);
    free(got);
}

/* ---- the staging shapes ---- */

typedef struct {
    size_t m, k, n;
    char why[200];
} s_shape;

/* The shapes that take each path of cuda.c's row-block pipeline for staging buffers of `stage` bytes and
 * elements of `es` bytes: rows per block = stage / (max(k, n) * es); 0 of them (a row wider than a buffer)
 * takes the whole-operand fallback. */
static size_t s_stage_shapes(size_t stage, size_t es, s_shape *out)
{
    size_t kb = stage >> 10, w = stage / es, rows, i = 0;
    /* k > n: two full blocks and a partial one of half a block. */
    rows = stage / (96 * es);
    out[i] = (s_shape){2 * rows + rows / 2 + 1, 96, 64, ""};
    snprintf(out[i].why, sizeof out[i].why,
             "%zu KiB staging: blocks of %zu rows, k the wider: 2 full and one of %zu", kb, rows,
             rows / 2 + 1);
    i++;
    /* n > k: three full blocks and a partial one, an even count where the case above has an odd one. */
    rows = stage / (104 * es);
    out[i] = (s_shape){3 * rows + 7, 40, 104, ""};
    snprintf(out[i].why, sizeof out[i].why,
             "%zu KiB staging: blocks of %zu rows, n the wider: 3 full and one of 7", kb, rows);
    i++;
    /* A last block of a single row. */
    rows = stage / (129 * es);
    out[i] = (s_shape){rows + 1, 129, 129, ""};
    snprintf(out[i].why, sizeof out[i].why, "%zu KiB staging: blocks of %zu rows: one full and one of 1 row",
             kb, rows);
    i++;
    /* An exact multiple: no partial block. */
    rows = stage / (77 * es);
    out[i] = (s_shape){2 * rows, 77, 50, ""};
    snprintf(out[i].why, sizeof out[i].why, "%zu KiB staging: blocks of %zu rows: exactly 2", kb, rows);
    i++;
    /* A row exactly one buffer wide: blocks of one row. */
    out[i] = (s_shape){4, w, 3, ""};
    snprintf(out[i].why, sizeof out[i].why,
             "%zu KiB staging: each row of a exactly one buffer: 4 blocks of 1 row", kb);
    i++;
    /* One element wider than a buffer, through k, then through n: the whole-operand fallback. */
    out[i] = (s_shape){5, w + 1, 3, ""};
    snprintf(out[i].why, sizeof out[i].why,
             "%zu KiB staging: rows of a one element wider than a buffer: whole operands", kb);
    i++;
    out[i] = (s_shape){3, 4, w + 1, ""};
    snprintf(out[i].why, sizeof out[i].why,
             "%zu KiB staging: rows of b and c one element wider than a buffer: whole operands", kb);
    i++;
    return i;
}

#define S_SHAPE_MULTI 0 /* s_stage_shapes' index of the several-blocks case */
#define S_SHAPE_WIDE 5  /* and of the rows-wider-than-a-buffer case */

static const titan_dtype s_dtypes[] = {TITAN_DTYPE_FLOAT32, TITAN_DTYPE_FLOAT64};

static void s_stage_products(titan_client *c, size_t stage)
{
    for (int d = 0; d < 2; d++) {
        s_shape sh[8];
        size_t count = s_stage_shapes(stage, titan_dtype_size(s_dtypes[d]), sh);
        for (size_t i = 0; i < count; i++)
            s_product(c, s_dtypes[d], sh[i].m, sh[i].k, sh[i].n, 40 + i, sh[i].why);
    }
}

/* ---- host and resident operands mixed ---- */

static void s_operand_json(char *buf, size_t cap, const char *ref, titan_dtype dt, size_t rows, size_t cols,
                           int frame)
{
    if (ref)
        snprintf(buf, cap, "{\"ref\":\"%s\"}", ref);
    else
        snprintf(buf, cap, "{\"dtype\":\"%s\",\"shape\":[%zu,%zu],\"frame\":%d}", titan_dtype_name(dt), rows,
                 cols, frame);
}

/* One matrix_multiply with a and/or b resident (ra, rb non-NULL) and the rest sent, kept or not; the product
 * (read back with tensor_get when kept) in *got, malloc'd. 0, or -1 with why. */
static int s_mixed_call(titan_client *c, titan_dtype dt, size_t m, size_t k, size_t n, const void *a,
                        const void *b, const char *ra, const char *rb, bool keep, void **got, char *why,
                        size_t cap, const char *label)
{
    size_t es = titan_dtype_size(dt), cbytes = m * n * es;
    char ja[160], jb[160], header[512];
    titan_frame frames[2];
    size_t nf = 0;
    if (!ra) frames[nf++] = (titan_frame){a, m * k * es};
    s_operand_json(ja, sizeof ja, ra, dt, m, k, 1);
    if (!rb) frames[nf++] = (titan_frame){b, k * n * es};
    s_operand_json(jb, sizeof jb, rb, dt, k, n, (int)nf);
    snprintf(header, sizeof header, "{\"op\":\"matrix_multiply\",\"a\":%s,\"b\":%s%s}", ja, jb,
             keep ? ",\"keep\":true" : "");
    titan_reply *r = NULL;
    int rc = titan_client_call(c, header, frames, nf, &r);
    s_check_answered(rc, label);
    *got = NULL;
    if (rc != 0) {
        snprintf(why, cap, "the call failed: %s", strerror(-rc));
        return -1;
    }
    json_t *h = json_loads(titan_reply_header(r), 0, NULL);
    json_t *res = json_object_get(h, "result");
    int out = -1;
    if (!json_is_object(res)) {
        snprintf(why, cap, "%.300s", titan_reply_header(r));
    } else if (keep) {
        const char *ref = json_string_value(json_object_get(res, "ref"));
        size_t bytes = 0;
        char kref[TITAN_TENSOR_REF_MAX];
        snprintf(kref, sizeof kref, "%s", ref ? ref : "");
        if (!ref || (json_int_t)cbytes != json_integer_value(json_object_get(res, "bytes"))) {
            snprintf(why, cap, "a kept product of the wrong size: %.300s", titan_reply_header(r));
        } else if ((rc = titan_client_tensor_get(c, kref, NULL, NULL, NULL, got, &bytes)) != 0 ||
                   bytes != cbytes) {
            s_check_answered(rc, label);
            snprintf(why, cap, "tensor_get of the kept product: %s (%zu bytes)",
                     rc ? titan_client_last_error(c) : "wrong size", bytes);
        } else if ((rc = titan_client_tensor_free(c, kref)) != 0) {
            s_check_answered(rc, label);
            snprintf(why, cap, "tensor_free of the kept product: %s", titan_client_last_error(c));
        } else {
            out = 0;
        }
    } else {
        size_t fsize = 0;
        const void *f = titan_reply_frame(r, 0, &fsize);
        if (!f || fsize != cbytes) {
            snprintf(why, cap, "a product of %zu bytes, not %zu: %.200s", fsize, cbytes,
                     titan_reply_header(r));
        } else {
            /* A copy: a ZeroMQ frame need not be aligned for doubles. */
            *got = s_xmalloc(cbytes);
            memcpy(*got, f, cbytes);
            out = 0;
        }
    }
    json_decref(h);
    titan_reply_destroy(&r);
    return out;
}

/* a and b put resident, then every mix of resident and sent operands, with and without keep. */
static void s_mixed(titan_client *c, titan_dtype dt, size_t stage, const s_shape *sh, uint64_t seed)
{
    size_t m = sh->m, k = sh->k, n = sh->n, es = titan_dtype_size(dt);
    size_t abytes = m * k * es;
    void *a = s_xmalloc(abytes), *b = s_xmalloc(k * n * es);
    s_fill(a, dt, m * k, seed);
    s_fill(b, dt, k * n, seed + 1000);
    void *want = s_cpu(dt, m, k, n, a, b);
    char label[400];
    s_label(label, sizeof label, dt, m, k, n, sh->why);
    char ra[TITAN_TENSOR_REF_MAX], rb[TITAN_TENSOR_REF_MAX];
    int64_t sa[2] = {(int64_t)m, (int64_t)k}, sb[2] = {(int64_t)k, (int64_t)n};
    int rc = titan_client_tensor_put(c, dt, 2, sa, a, ra);
    s_check_answered(rc, label);
    if (rc == 0) {
        rc = titan_client_tensor_put(c, dt, 2, sb, b, rb);
        s_check_answered(rc, label);
        if (rc != 0) titan_client_tensor_free(c, ra);
    }
    if (rc != 0) {
        s_ok(false, "%s: tensor_put of a and b: %s", label, titan_client_last_error(c));
        free(a);
        free(b);
        free(want);
        return;
    }
    /* The upload and the download of a go through the staging buffers in chunks; the last one partial. */
    void *back = NULL;
    size_t bytes = 0;
    rc = titan_client_tensor_get(c, ra, NULL, NULL, NULL, &back, &bytes);
    s_check_answered(rc, label);
    s_ok(rc == 0 && bytes == abytes && memcmp(back, a, abytes) == 0,
         "%s %zux%zu: tensor_put then tensor_get gives back the same %zu bytes (%zu KiB chunks: %zu full, "
         "then %zu "
         "bytes)%s%s",
         titan_dtype_name(dt), m, k, abytes, stage >> 10, abytes / stage, abytes % stage, rc ? ": " : "",
         rc ? titan_client_last_error(c) : "");
    free(back);
    static const struct {
        bool ares, bres, keep;
    } mixes[] = {{true, false, false}, {false, true, false}, {true, true, false},
                 {true, false, true},  {false, true, true},  {true, true, true}};
    for (size_t i = 0; i < sizeof mixes / sizeof mixes[0]; i++) {
        void *got = NULL;
        char res[400] = "";
        bool ok = s_mixed_call(c, dt, m, k, n, a, b, mixes[i].ares ? ra : NULL, mixes[i].bres ? rb : NULL,
                               mixes[i].keep, &got, res, sizeof res, label) == 0 &&
                  s_matches(dt, m, k, n, got, want, res, sizeof res);
        s_ok(ok, "%s, a %s, b %s%s: %s", label, mixes[i].ares ? "resident" : "sent",
             mixes[i].bres ? "resident" : "sent", mixes[i].keep ? ", product kept then read back" : "", res);
        free(got);
    }
    int ra_rc = titan_client_tensor_free(c, ra);
    s_check_answered(ra_rc, label);
    int rb_rc = titan_client_tensor_free(c, rb);
    s_check_answered(rb_rc, label);
    s_ok(ra_rc == 0 && rb_rc == 0, "%s %zux%zu: tensor_free of a and b%s%s", titan_dtype_name(dt), m, k,
         ra_rc || rb_rc ? ": " : "", ra_rc || rb_rc ? titan_client_last_error(c) : "");
    free(a);
    free(b);
    free(want);
}

static void s_mixed_all(titan_client *c, size_t stage)
{
    for (int d = 0; d < 2; d++) {
        s_shape sh[8];
        s_stage_shapes(stage, titan_dtype_size(s_dtypes[d]), sh);
        s_mixed(c, s_dtypes[d], stage, &sh[S_SHAPE_MULTI], 70 + (uint64_t)d);
        s_mixed(c, s_dtypes[d], stage, &sh[S_SHAPE_WIDE], 80 + (uint64_t)d);
    }
}

/* ---- two concurrent clients ---- */

/* Every operand under 1 MiB: the pool check after them needs a block size none of them used. */
static const size_t s_shapes_f32[][3] = {
    {200, 300, 100}, {333, 111, 222}, {129, 257, 65}, {1, 500, 1}, {400, 200, 300}};
static const size_t s_shapes_f64[][3] = {
    {150, 200, 250}, {257, 129, 63}, {311, 97, 173}, {2, 3, 4}, {300, 300, 300}};

typedef struct {
    int id;
    titan_dtype dt;
    const size_t (*shapes)[3];
    size_t count;
    pthread_barrier_t *start;
} s_job;

static void *s_client_thread(void *arg)
{
    s_job *j = arg;
    char ident[64], why[64];
    snprintf(ident, sizeof ident, "cuda-check-%d", j->id);
    snprintf(why, sizeof why, "client %d of 2, concurrently", j->id);
    titan_client *c = s_client(ident);
    pthread_barrier_wait(j->start);
    for (int round = 0; round < 2; round++)
        for (size_t i = 0; i < j->count; i++)
            s_product(c, j->dt, j->shapes[i][0], j->shapes[i][1], j->shapes[i][2], 100 * (uint64_t)j->id + i,
                      why);
    titan_client_destroy(&c);
    return NULL;
}

static void s_concurrent(void)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    s_job jobs[2] = {
        {1, TITAN_DTYPE_FLOAT32, s_shapes_f32, sizeof s_shapes_f32 / sizeof s_shapes_f32[0], &start},
        {2, TITAN_DTYPE_FLOAT64, s_shapes_f64, sizeof s_shapes_f64 / sizeof s_shapes_f64[0], &start}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, s_client_thread, &jobs[i]) != 0) s_abort("pthread_create failed");
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&start);
}

/* ---- gpu_info and the pool ---- */

static json_t *s_gpu_info(titan_client *c)
{
    titan_gpu_info gi;
    char *raw = NULL;
    int rc = titan_client_gpu_info(c, &gi, &raw);
    s_check_answered(rc, "gpu_info");
    if (rc != 0) return NULL;
    json_t *o = json_loads(raw, 0, NULL);
    free(raw);
    return o;
}

static long long s_device_allocs(titan_client *c)
{
    json_t *gi = s_gpu_info(c);
    json_t *v = json_object_get(json_object_get(gi, "memory_pool"), "device_allocs");
    long long x = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
    json_decref(gi);
    return x;
}

/* gpu_info's pool figures are read afresh on every call: a product of a block size never used before must
 * show as a new device allocation at once, and 20 more of it as none. 640x640 float32 is 1600 KiB, a block of
 * 1664 KiB: larger than any operand before it in this run (all under 1 MiB, the self-test's 256 bytes) and
 * not a cuBLAS workspace's 4 or 32 MiB. */
static void s_pool(titan_client *c)
{
    size_t d = 640;
    float *x = s_xmalloc(d * d * 4), *want;
    s_fill(x, TITAN_DTYPE_FLOAT32, d * d, 99);
    want = s_cpu(TITAN_DTYPE_FLOAT32, d, d, d, x, x);
    int bad = 0, failed = 0;
    char res[128] = "", err[160] = "";
    long long before = s_device_allocs(c), after_new = -1, warm = -1;
    for (int i = 0; i < 24; i++) {
        void *out = NULL;
        int rc = titan_client_matmul(c, TITAN_DTYPE_FLOAT32, d, d, d, x, x, &out);
        s_check_answered(rc, "the pool's products");
        if (rc != 0) {
            if (failed++ == 0) snprintf(err, sizeof err, "%.150s", titan_client_last_error(c));
        } else if (!s_matches(TITAN_DTYPE_FLOAT32, d, d, d, out, want, res, sizeof res)) {
            bad++;
        }
        free(out);
        /* After the first (a new size) and after 3 more (both executors warm), then 20 more. */
        if (i == 0) after_new = s_device_allocs(c);
        if (i == 3) warm = s_device_allocs(c);
    }
    long long end = s_device_allocs(c);
    /* Figures from failed products prove nothing: both allocation checks need every product done. */
    s_ok(failed == 0 && before >= 0 && after_new > before,
         "gpu_info's memory_pool is live: a product of a new size shows as device allocations at once "
         "(device_allocs %lld, then %lld)",
         before, after_new);
    s_ok(failed == 0 && warm >= 0 && end == warm,
         "20 same-sized products allocate no device memory (device_allocs %lld, then %lld)", warm, end);
    s_ok(failed == 0 && bad == 0,
         "the pool's 24 products of 640^3 float32 match OpenBLAS (%d failed, %d wrong)%s%s%s%s", failed, bad,
         failed ? ": " : "", err, bad ? ": " : "", bad ? res : "");
    free(x);
    free(want);
}

static void s_device_fields(titan_client *c, int index)
{
    json_t *gi = s_gpu_info(c);
    const char *name = json_string_value(json_object_get(gi, "name"));
    const char *backend = json_string_value(json_object_get(gi, "backend"));
    const char *cap = json_string_value(json_object_get(gi, "cuda_capability"));
    s_ok(backend && strcmp(backend, "cuda") == 0, "gpu_info: backend cuda (%s)", name ? name : "?");
    s_ok(cap && strchr(cap, '.'), "gpu_info: compute capability %s", cap ? cap : "(none)");
    json_t *di = json_object_get(gi, "device_index");
    s_ok(json_is_integer(di) && json_integer_value(di) == index &&
             json_integer_value(json_object_get(gi, "multi_processor_count")) > 0,
         "gpu_info: device %d (device_index %lld) and its multiprocessors", index,
         json_is_integer(di) ? (long long)json_integer_value(di) : -1LL);
    const char *drv = json_string_value(json_object_get(gi, "driver_version"));
    const char *rt = json_string_value(json_object_get(gi, "runtime_version"));
    s_ok(drv && rt, "gpu_info: driver %s, CUDA runtime %s", drv ? drv : "(null)", rt ? rt : "(null)");
    s_ok(json_is_true(json_object_get(gi, "ready")) &&
             json_is_integer(json_object_get(json_object_get(gi, "memory_pool"), "device_allocs")),
         "gpu_info: ready, with the pool's figures");
    char *dump = json_dumps(gi, JSON_COMPACT);
    pthread_mutex_lock(&g_tap);
    printf("# gpu_info: %s\n", dump ? dump : "?"); /* the device kit's summary reads this line */
    fflush(stdout);
    pthread_mutex_unlock(&g_tap);
    free(dump);
    json_decref(gi);
}

static void s_json_example(titan_client *c)
{
    titan_reply *r = NULL;
    int rc = titan_client_call(c, "{\"op\":\"matrix_multiply\",\"a\":[[1,2],[3,4]],\"b\":[[5,6],[7,8]]}",
                               NULL, 0, &r);
    s_check_answered(rc, "the design's JSON example");
    s_ok(rc == 0 && strcmp(titan_reply_header(r), "{\"result\":[[19.0,22.0],[43.0,50.0]]}") == 0,
         "the design's JSON example, exactly: %s", rc == 0 ? titan_reply_header(r) : strerror(-rc));
    titan_reply_destroy(&r);
}

/* ---- encoders (issue 20) ---- */

/* float32 through the same math in another order (cuBLAS's products, padded batches): a few ulp of values near 1
 * per layer, far below this. */
#define S_BERT_TOL 1e-4

typedef struct {
    int n;
    int32_t *ids; /* n rows of up to maxlen */
    int *len;
    int maxlen;
} s_inputs;

/* n id lists [CLS] w... [SEP] of lo..hi tokens (1 token: [CLS] alone), ids of words below vocab. */
static s_inputs s_make_inputs(int n, int lo, int hi, int vocab, uint64_t seed)
{
    s_inputs in = {n, s_xmalloc((size_t)n * hi * sizeof(int32_t)), s_xmalloc((size_t)n * sizeof(int)), hi};
    uint64_t st = seed * 0x9E3779B97F4A7C15ull + 7;
    for (int i = 0; i < n; i++) {
        st ^= st << 13, st ^= st >> 7, st ^= st << 17;
        int L = lo + (int)(st % (uint64_t)(hi - lo + 1));
        in.len[i] = L;
        for (int p = 0; p < L; p++) {
            st ^= st << 13, st ^= st >> 7, st ^= st << 17;
            in.ids[(size_t)i * hi + p] = p == 0 ? 2 : p == L - 1 ? 3 : 5 + (int32_t)(st % (uint64_t)(vocab - 5));
        }
    }
    return in;
}

static void s_free_inputs(s_inputs *in)
{
    free(in->ids);
    free(in->len);
}

/* The embeddings of `in` from model `model` (n x *dims floats, malloc'd), or NULL with why. */
static float *s_embed(titan_client *c, const char *model, const s_inputs *in, int *dims, char *why, size_t cap)
{
    json_t *rows = json_array();
    for (int i = 0; i < in->n; i++) {
        json_t *r = json_array();
        for (int p = 0; p < in->len[i]; p++) json_array_append_new(r, json_integer(in->ids[(size_t)i * in->maxlen + p]));
        json_array_append_new(rows, r);
    }
    json_t *req = json_pack("{s:s, s:s, s:o, s:b}", "op", "embed", "model", model, "input", rows, "binary", 1);
    char *hdr = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!hdr) {
        snprintf(why, cap, "out of memory");
        return NULL;
    }
    titan_reply *r = NULL;
    int rc = titan_client_call(c, hdr, NULL, 0, &r);
    free(hdr);
    s_check_answered(rc, "embed");
    if (rc != 0) {
        snprintf(why, cap, "the call failed: %s", strerror(-rc));
        return NULL;
    }
    json_t *h = json_loads(titan_reply_header(r), 0, NULL);
    json_t *shape = json_object_get(json_object_get(h, "embeddings"), "shape");
    float *out = NULL;
    size_t fsize = 0;
    const void *f = titan_reply_frame(r, 0, &fsize);
    long long n = json_integer_value(json_array_get(shape, 0)), d = json_integer_value(json_array_get(shape, 1));
    if (!f || n != in->n || d < 1 || fsize != (size_t)(n * d) * sizeof(float)) {
        snprintf(why, cap, "%.300s", titan_reply_header(r));
    } else {
        out = s_xmalloc(fsize);
        memcpy(out, f, fsize);
        *dims = (int)d;
    }
    json_decref(h);
    titan_reply_destroy(&r);
    return out;
}

static int s_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The median milliseconds of `reps` embeds of `in` (after one not timed), or -1 with why. */
static double s_time_embed(titan_client *c, const char *model, const s_inputs *in, int reps, char *why, size_t cap)
{
    double t[16];
    int d;
    for (int i = -1; i < reps && i < 16; i++) {
        double t0 = s_now();
        float *e = s_embed(c, model, in, &d, why, cap);
        if (!e) return -1;
        free(e);
        if (i >= 0) t[i] = (s_now() - t0) * 1e3;
    }
    qsort(t, (size_t)reps, sizeof(double), s_cmp_double);
    return t[reps / 2];
}

static double s_max_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN wins */
    }
    return m;
}

static const cc_bert_shape s_bert_small = {64, 2, 4, 128, 500, 128};
static const cc_bert_shape s_bert_minilm = {384, 6, 12, 1536, 30522, 512}; /* all-MiniLM-L6-v2's shape */

/* A CPU worker and a `device` worker serve the same two models (written here): the small one's and the MiniLM-
 * shaped one's embeddings of inputs of mixed lengths agree within S_BERT_TOL; then the MiniLM-shaped encoder's
 * time for one 128-token input and for 32 of them, on each worker ("# bert_bench:" lines, for the kit's summary).
 */
static void s_encoders(const char *worker, const char *device, bool quick)
{
    char mdir[300], small[340], mini[340], why[400];
    snprintf(mdir, sizeof mdir, "%s/models", g_dir);
    snprintf(small, sizeof small, "%s/small", mdir);
    snprintf(mini, sizeof mini, "%s/minilm", mdir);
    double t0 = s_now();
    bool wrote = mkdir(mdir, 0755) == 0 && cc_bert_write(small, &s_bert_small, 1, why, sizeof why) == 0 &&
                 cc_bert_write(mini, &s_bert_minilm, 2, why, sizeof why) == 0;
    s_ok(wrote, "encoder models written (hidden 64, 2 layers; and MiniLM-L6's shape: hidden 384, 6 layers, 12 heads, "
         "FFN 1536, vocab 30522) in %.1f s%s%s", s_now() - t0, wrote ? "" : ": ", wrote ? "" : why);
    if (!wrote) return;
    s_inputs acc_small = s_make_inputs(24, 1, 128, s_bert_small.vocab, 11);
    s_inputs acc_mini = s_make_inputs(8, 1, 128, s_bert_minilm.vocab, 12);
    s_inputs b1 = s_make_inputs(1, 128, 128, s_bert_minilm.vocab, 13);
    s_inputs b32 = s_make_inputs(32, 128, 128, s_bert_minilm.vocab, 14);
    int reps = quick ? 1 : 5;
    float *es[2] = {NULL, NULL}, *em[2] = {NULL, NULL};
    int ds[2] = {0, 0}, dm[2] = {0, 0};
    double t1[2] = {-1, -1}, t32[2] = {-1, -1};
    for (int w = 0; w < 2; w++) {
        const char *dev = w ? device : "cpu";
        char what[200];
        snprintf(what, sizeof what, "titan-worker --device %s --models (the encoders) starts", dev);
        t0 = s_now();
        if (s_start(worker, dev, mdir, S_DEFAULT_STAGE_KB, 3 + w, why, sizeof why) != 0) {
            pthread_mutex_lock(&g_tap);
            char last[512];
            s_log_tail_locked(last, sizeof last);
            pthread_mutex_unlock(&g_tap);
            s_ok(false, "%s: %s: %s", what, why, last[0] ? last : "(the worker's log is empty)");
            continue;
        }
        s_ok(true, "%s in %.1f s", what, s_now() - t0);
        titan_client *c = s_client("cuda-check-bert");
        es[w] = s_embed(c, "small", &acc_small, &ds[w], why, sizeof why);
        if (!es[w]) s_ok(false, "embed on %s (small model): %s", dev, why);
        em[w] = s_embed(c, "minilm", &acc_mini, &dm[w], why, sizeof why);
        if (!em[w]) s_ok(false, "embed on %s (MiniLM-shaped model): %s", dev, why);
        t1[w] = s_time_embed(c, "minilm", &b1, reps, why, sizeof why);
        if (t1[w] < 0) s_ok(false, "encoder benchmark on %s, 1 x 128 tokens: %s", dev, why);
        t32[w] = s_time_embed(c, "minilm", &b32, reps, why, sizeof why);
        if (t32[w] < 0) s_ok(false, "encoder benchmark on %s, 32 x 128 tokens: %s", dev, why);
        titan_client_destroy(&c);
        int rc = s_stop();
        s_ok(rc == 0, "the worker exits cleanly on SIGTERM (status %d)", rc);
    }
    if (es[0] && es[1]) {
        double d = ds[0] == ds[1] ? s_max_diff(es[0], es[1], (size_t)acc_small.n * ds[0]) : INFINITY;
        s_ok(d <= S_BERT_TOL, "embed on %s agrees with the CPU within %g: 24 inputs of 1 to 128 tokens, hidden 64 "
             "(max abs difference %.3g)", device, S_BERT_TOL, d);
    }
    if (em[0] && em[1]) {
        double d = dm[0] == dm[1] ? s_max_diff(em[0], em[1], (size_t)acc_mini.n * dm[0]) : INFINITY;
        s_ok(d <= S_BERT_TOL, "embed on %s agrees with the CPU within %g: 8 inputs of 1 to 128 tokens, MiniLM-L6's "
             "shape (max abs difference %.3g)", device, S_BERT_TOL, d);
    }
    if (t1[1] > 0 && t32[1] > 0) {
        s_ok(true, "encoder benchmark on %s (MiniLM-L6's shape, median of %d): 1 x 128 tokens %.2f ms, 32 x 128 tokens "
             "%.2f ms (%.0f tokens/s)", device, reps, t1[1], t32[1], 32 * 128 / (t32[1] / 1e3));
        for (int k = 0; k < 2; k++) {
            double g = k ? t32[1] : t1[1], p = k ? t32[0] : t1[0];
            int nb = k ? 32 : 1;
            printf("# bert_bench: shape=MiniLM-L6 batch=%dx128 reps=%d device=%s device_ms=%.2f device_tok_s=%.0f "
                   "cpu_ms=%.2f cpu_tok_s=%.0f speedup=%.2f\n",
                   nb, reps, device, g, nb * 128 / (g / 1e3), p, p > 0 ? nb * 128 / (p / 1e3) : 0.0,
                   p > 0 ? p / g : 0.0);
        }
        fflush(stdout);
    }
    for (int w = 0; w < 2; w++) {
        free(es[w]);
        free(em[w]);
    }
    s_free_inputs(&acc_small);
    s_free_inputs(&acc_mini);
    s_free_inputs(&b1);
    s_free_inputs(&b32);
}

/* ---- main ---- */

/* Removes the run's directory: after a pass or a skip. After a failure it stays, for the logs named above. */
static void s_cleanup(void)
{
    for (int run = 1; run <= 4; run++) {
        char p[320];
        snprintf(p, sizeof p, "%s/worker-%d.log", g_dir, run);
        unlink(p);
        snprintf(p, sizeof p, "%s/endpoint-%d", g_dir, run);
        unlink(p);
    }
    char p[320];
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "%s/models/%s", g_dir, k ? "minilm" : "small");
        cc_bert_remove(p);
    }
    snprintf(p, sizeof p, "%s/models", g_dir);
    rmdir(p);
    rmdir(g_dir);
}

static void s_usage(const char *argv0)
{
    fprintf(stderr, "usage: %s PATH-TO-TITAN-WORKER [--big N] [--device cuda|cuda:N] [--quick]\n", argv0);
}

/* A start that failed: where a GPU is visible (or after a first run that worked), "not ok" with the worker's
 * log; elsewhere, before any line, the skip plan. visible_why: what made a GPU visible (NULL: not said).
 * Returns the exit status. */
static int s_start_failed(const char *what, const char *why, bool visible, const char *visible_why)
{
    pthread_mutex_lock(&g_tap);
    if (!visible && g_n == 0) {
        char last[512];
        s_log_tail_locked(last, sizeof last);
        printf("1..0 # SKIP no NVIDIA GPU here (%s), and %s: %s: %s\n", visible_why, what, why,
               last[0] ? last : "(the worker's log is empty)");
        fflush(stdout);
        pthread_mutex_unlock(&g_tap);
        s_cleanup();
        return 0;
    }
    /* The reason first in the line itself: the device kit's summary lists the "not ok" lines. */
    char last[512];
    printf("# %s: %s\n", what, why);
    s_log_tail_locked(last, sizeof last);
    pthread_mutex_unlock(&g_tap);
    s_ok(false, "%s: %s: %s%s%s", what, why, last[0] ? last : "(the worker's log is empty)",
         visible_why ? "; a GPU is visible: " : "", visible_why ? visible_why : "");
    printf("1..%d\n", g_n);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(argv[0]);
        return 2;
    }
    const char *worker = argv[1], *device = "cuda";
    long big = -1;
    bool quick = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--big") == 0 && i + 1 < argc) {
            big = atol(argv[++i]);
            if (big < 1 || big > 16384) {
                fprintf(stderr, "%s: --big takes 1 to 16384\n", argv[0]);
                return 2;
            }
        } else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
            device = argv[++i];
        } else if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else {
            s_usage(argv[0]);
            return 2;
        }
    }
    if (big < 0) big = quick ? 1024 : 4096;
    int index = 0;
    if (strcmp(device, "cuda") != 0) {
        char *end;
        long v = strncmp(device, "cuda:", 5) == 0 ? strtol(device + 5, &end, 10) : -1;
        if (v < 0 || v > 255 || *end) {
            fprintf(stderr, "%s: --device takes cuda or cuda:N\n", argv[0]);
            return 2;
        }
        index = (int)v;
    }
    long stage_kb = s_env_long("TITAN_CUDA_STAGE_KB", S_DEFAULT_STAGE_KB, 4, 1L << 20); /* cuda.c's bounds */
    g_call_s = (int)s_env_long("TITAN_CHECK_CALL_S", 120, 1, 86400);

    char visible_why[300];
    bool visible = s_gpu_visible(visible_why, sizeof visible_why);
    snprintf(g_dir, sizeof g_dir, "%s/titan-cuda-check-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "%s: mkdtemp %s: %s\n", argv[0], g_dir, strerror(errno));
        return 2;
    }
    signal(SIGTERM, s_on_signal);
    signal(SIGINT, s_on_signal);
    signal(SIGHUP, s_on_signal);
    signal(SIGPIPE, SIG_IGN);
    pthread_t wd;
    if (pthread_create(&wd, NULL, s_watchdog, NULL) != 0) return 2;
    pthread_detach(wd);
    printf("# NVIDIA GPU visible: %s (%s)\n", visible ? "yes" : "no", visible_why);

    /* Run 1: the given (or default) staging size. */
    char what[200], why[300];
    snprintf(what, sizeof what, "titan-worker --device %s starts (%ld KiB staging)", device, stage_kb);
    double t0 = s_now();
    if (s_start(worker, device, NULL, stage_kb, 1, why, sizeof why) != 0)
        return s_start_failed(what, why, visible, visible_why);
    s_ok(true, "%s in %.1f s", what, s_now() - t0);
    titan_client *c = s_client("cuda-check");
    s_device_fields(c, index);
    s_concurrent();
    s_pool(c);
    s_json_example(c);
    if (!quick) {
        s_stage_products(c, (size_t)stage_kb << 10);
        s_mixed_all(c, (size_t)stage_kb << 10);
    }
    for (int d = 0; d < 2; d++)
        s_product(c, s_dtypes[d], (size_t)big, (size_t)big, (size_t)big, 7, "--big");
    titan_client_destroy(&c);
    int rc = s_stop();
    s_ok(rc == 0, "the worker exits cleanly on SIGTERM (status %d)", rc);

    /* Run 2: small staging buffers, so that modest shapes span many row blocks. */
    snprintf(what, sizeof what, "titan-worker --device %s starts again with %d KiB staging", device,
             S_SMALL_STAGE_KB);
    t0 = s_now();
    if (s_start(worker, device, NULL, S_SMALL_STAGE_KB, 2, why, sizeof why) != 0) {
        s_start_failed(what, why, true, NULL);
    } else {
        s_ok(true, "%s in %.1f s", what, s_now() - t0);
        c = s_client("cuda-check");
        s_concurrent();
        s_stage_products(c, (size_t)S_SMALL_STAGE_KB << 10);
        s_mixed_all(c, (size_t)S_SMALL_STAGE_KB << 10);
        titan_client_destroy(&c);
        rc = s_stop();
        s_ok(rc == 0, "the worker exits cleanly on SIGTERM (status %d)", rc);
        /* Runs 3 and 4: encoders on the CPU, then on the device. */
        s_encoders(worker, device, quick);
        printf("1..%d\n", g_n);
    }
    fflush(stdout);
    if (!g_failed) s_cleanup();
    return g_failed ? 1 : 0;
}
