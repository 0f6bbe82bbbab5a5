/* cpu.c - the CPU backend: OpenBLAS GEMM and host information. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "backend.h"
#include "sysinfo.h"

/* OpenBLAS's own knob; declared here because not every cblas.h declares it. */
extern void openblas_set_num_threads(int num_threads);

static int s_gemm(titan_backend *be, titan_dtype dt, size_t m, size_t k, size_t n, const void *a, const void *b,
                  void *c)
{
    (void)be;
    /* cblas takes int dimensions */
    if (m > (size_t)INT32_MAX || k > (size_t)INT32_MAX || n > (size_t)INT32_MAX) return -EOVERFLOW;
    if (dt == TITAN_DTYPE_FLOAT32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, a, (int)k, b, (int)n,
                    0.0f, c, (int)n);
    else if (dt == TITAN_DTYPE_FLOAT64)
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0, a, (int)k, b, (int)n,
                    0.0, c, (int)n);
    else
        return -EINVAL;
    return 0;
}

static void s_destroy(titan_backend *be)
{
    free(be);
}

int titan_backend_cpu_open(int blas_threads, titan_backend **out)
{
    titan_backend *be = calloc(1, sizeof(*be));
    if (!be) return -ENOMEM;
    titan_sysinfo si;
    titan_sysinfo_read(&si);
    snprintf(be->info.name, sizeof(be->info.name), "%s", si.cpu_model);
    be->info.backend = "cpu";
    be->info.total_memory_gb = (double)si.mem_total / 1e9;
    be->info.multi_processor_count = si.cores;
    be->info.cuda_capability[0] = '\0';
    be->gemm = s_gemm;
    be->destroy = s_destroy;
    openblas_set_num_threads(blas_threads > 0 ? blas_threads : si.cores);
    *out = be;
    return 0;
}

int titan_backend_open(const char *device, int blas_threads, titan_backend **out, char *err, size_t errcap)
{
    if (strcmp(device, "auto") == 0 || strcmp(device, "cpu") == 0) return titan_backend_cpu_open(blas_threads, out);
    if (strcmp(device, "cuda") == 0 || strncmp(device, "cuda:", 5) == 0) {
        snprintf(err, errcap,
                 "device '%s' is unsupported: this titan-worker was built without the CUDA backend; "
                 "use --device cpu (or auto)",
                 device);
        return -ENOTSUP;
    }
    snprintf(err, errcap, "unknown device '%s': expected auto, cpu, cuda or cuda:N", device);
    return -EINVAL;
}

void titan_backend_destroy(titan_backend **be)
{
    if (!be || !*be) return;
    (*be)->destroy(*be);
    *be = NULL;
}
