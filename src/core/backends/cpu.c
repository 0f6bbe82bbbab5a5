/* cpu.c - the CPU backend: OpenBLAS GEMM and host information. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "backend.h"
#include "clock.h"
#include "hostpool.h"
#include "request.h"
#include "sysinfo.h"

/* OpenBLAS's own knob; declared here because not every cblas.h declares it. */
extern void openblas_set_num_threads(int num_threads);

static int s_gemm(titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b, void *c)
{
    /* cblas takes int dimensions */
    if (m > (size_t)INT32_MAX || k > (size_t)INT32_MAX || n > (size_t)INT32_MAX) return -EOVERFLOW;
    if (dt == TITAN_DTYPE_FLOAT32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k, b,
                    (int)n, 0.0f, c, (int)n);
    else if (dt == TITAN_DTYPE_FLOAT64)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0, a, (int)k, b,
                    (int)n, 0.0, c, (int)n);
    else
        return -EINVAL;
    return 0;
}

/* On the CPU, "device" memory is host memory: resident tensors and host operands are the same kind of
 * pointer. */
static int s_matmul(titan_backend *be, titan_dtype dt, size_t m, size_t k, size_t n, titan_operand a,
                    titan_operand b, titan_result c, titan_error *err)
{
    (void)be;
    int rc = s_gemm(dt, m, k, n, a.host ? a.host : a.dev, b.host ? b.host : b.dev, c.host ? c.host : c.dev);
    if (rc == -EOVERFLOW) {
        titan_fail(err, "too_large",
                   "a dimension of %zux%zu times %zux%zu is over 2^31-1, the CPU backend's limit", m, k, k,
                   n);
        return -1;
    }
    if (rc) {
        titan_fail(err, "bad_request", "the CPU backend multiplies float32 and float64 only");
        return -1;
    }
    return 0;
}

static int s_mem_alloc(titan_backend *be, size_t bytes, void **dev, titan_error *err)
{
    (void)be;
    void *p = titan_hostbuf_alloc(bytes);
    if (!p) {
        titan_fail(err, "too_large", "out of host memory: could not allocate %zu bytes for a resident tensor",
                   bytes);
        return -1;
    }
    *dev = p;
    return 0;
}

static void s_mem_free(titan_backend *be, void *dev, size_t bytes)
{
    (void)be;
    (void)bytes;
    titan_hostbuf_free(dev);
}

static int s_copy(titan_backend *be, void *dst, const void *src, size_t bytes, titan_error *err)
{
    (void)be;
    (void)err;
    memcpy(dst, src, bytes);
    return 0;
}

/* Host figures are sampled at most this often; utilization is the busy share of the CPUs' time
 * between two samples, so it needs one window before it is known. */
#define SAMPLE_INTERVAL_S 0.5

typedef struct {
    titan_backend be; /* first: the backend's pointer is this object's */
    pthread_mutex_t lock;
    double t_sample;      /* CLOCK_MONOTONIC seconds of the last sample */
    uint64_t busy, total; /* /proc/stat ticks at the last sample */
    bool have_ticks;
    titan_device_stats last;
    char thermal[4096]; /* the zone's temp file; empty: none */
} s_cpu;

/* Takes a sample into c->last (c->lock held). */
static void s_sample(s_cpu *c, double now)
{
    uint64_t total, avail, busy, ticks;
    c->last.has_memory = titan_sysinfo_memory("/proc/meminfo", &total, &avail) == 0;
    if (c->last.has_memory) {
        c->last.memory_total_bytes = total;
        c->last.memory_used_bytes = total - avail;
    }
    if (titan_sysinfo_cpu_ticks("/proc/stat", &busy, &ticks) == 0) {
        if (c->have_ticks && ticks > c->total && busy >= c->busy) {
            double r = (double)(busy - c->busy) / (double)(ticks - c->total);
            c->last.utilization = r > 1 ? 1 : r;
            c->last.has_utilization = true;
        }
        c->busy = busy;
        c->total = ticks;
        c->have_ticks = true;
    } else {
        c->have_ticks = c->last.has_utilization = false;
    }
    c->last.has_temperature =
        c->thermal[0] && titan_sysinfo_read_temperature(c->thermal, &c->last.temperature_c) == 0;
    c->t_sample = now;
}

static void s_stats(titan_backend *be, titan_device_stats *out)
{
    s_cpu *c = (s_cpu *)be;
    double now = titan_clock_mono_s();
    pthread_mutex_lock(&c->lock);
    if (now - c->t_sample >= SAMPLE_INTERVAL_S) s_sample(c, now);
    *out = c->last;
    pthread_mutex_unlock(&c->lock);
}

static void s_destroy(titan_backend *be)
{
    s_cpu *c = (s_cpu *)be;
    pthread_mutex_destroy(&c->lock);
    free(c);
}

int titan_backend_cpu_open(int blas_threads, titan_backend **out)
{
    s_cpu *c = calloc(1, sizeof(*c));
    if (!c) return -ENOMEM;
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return -ENOMEM;
    }
    titan_backend *be = &c->be;
    titan_sysinfo si;
    titan_sysinfo_read(&si);
    snprintf(be->info.name, sizeof(be->info.name), "%s", si.cpu_model);
    be->info.backend = "cpu";
    be->info.total_memory_gb = (double)si.mem_total / 1e9;
    be->info.multi_processor_count = si.cores;
    be->info.cuda_capability[0] = '\0';
    be->info.device_index = -1;
    be->matmul = s_matmul;
    be->mem_alloc = s_mem_alloc;
    be->mem_free = s_mem_free;
    be->upload = s_copy;
    be->download = s_copy;
    be->stats = s_stats;
    be->destroy = s_destroy;
    if (titan_sysinfo_find_cpu_thermal("/sys/class/thermal", c->thermal, sizeof(c->thermal)) != 0)
        c->thermal[0] = '\0';
    s_sample(c, titan_clock_mono_s()); /* the first utilization window starts now */
    openblas_set_num_threads(blas_threads > 0 ? blas_threads : si.cores);
    *out = be;
    return 0;
}

void titan_backend_destroy(titan_backend **be)
{
    if (!be || !*be) return;
    (*be)->destroy(*be);
    *be = NULL;
}
