/* select.c - the device grammar and the choice of backend (see select.h), for titan-worker and for
 * libtitan's in-process engine alike: the same CUDA module, loaded the same way. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "module.h"
#include "select.h"

/* Loads the CUDA module: $TITAN_CUDA_MODULE when set (a path; for tests and odd layouts), else
 * titan-backend-cuda.so where module.c looks. Returns its entry point, or NULL with err set. */
static titan_cuda_open_fn s_cuda_entry(char *err, size_t errcap)
{
    const char *over = getenv("TITAN_CUDA_MODULE");
    void *h;
    if (over && *over) {
        h = dlopen(over, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            snprintf(err, errcap, "cannot load TITAN_CUDA_MODULE=%.300s: %.300s", over, dlerror());
            return NULL;
        }
    } else {
        char msg[700];
        h = titan_module_open(TITAN_CUDA_MODULE, msg, sizeof(msg));
        if (!h) {
            snprintf(err, errcap, "no CUDA backend: %s (build with -Dcuda=enabled and the CUDA toolkit)",
                     msg);
            return NULL;
        }
    }
    titan_cuda_open_fn fn;
    *(void **)&fn = dlsym(h, TITAN_CUDA_ENTRY);
    if (!fn) snprintf(err, errcap, "the CUDA module has no %s", TITAN_CUDA_ENTRY);
    return fn;
}

/* Whether an NVIDIA GPU could be there at all: without the kernel driver (or a GPU node) no CUDA call can
 * succeed, and loading cuBLAS only to learn that costs every CPU-only start a fraction of a second. */
static int s_nvidia_present(void)
{
    return access("/proc/driver/nvidia/version", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0;
}

int titan_device_parse(const char *text, size_t len, titan_device_spec *out)
{
    if (!text) return -EINVAL;
    if ((len == 4 && memcmp(text, "auto", 4) == 0) || (len == 3 && memcmp(text, "cpu", 3) == 0)) {
        out->kind = text[0] == 'a' ? TITAN_DEVICE_AUTO : TITAN_DEVICE_CPU;
        out->index = -1;
        return 0;
    }
    if (len == 4 && memcmp(text, "cuda", 4) == 0) {
        out->kind = TITAN_DEVICE_CUDA;
        out->index = 0;
        return 0;
    }
    if (len < 6 || len > 8 || memcmp(text, "cuda:", 5) != 0) return -EINVAL;
    int v = 0;
    for (size_t i = 5; i < len; i++) {
        if (text[i] < '0' || text[i] > '9') return -EINVAL;
        v = v * 10 + (text[i] - '0');
    }
    if (v > TITAN_DEVICE_INDEX_MAX) return -EINVAL;
    out->kind = TITAN_DEVICE_CUDA;
    out->index = v;
    return 0;
}

int titan_backend_select(const char *device, int blas_threads, const titan_cuda_opts *opts,
                         titan_backend **out, char *why, size_t whycap, bool *why_warns, char *err,
                         size_t errcap)
{
    titan_device_spec d;
    if (whycap) why[0] = '\0';
    *why_warns = false;
    if (!device || titan_device_parse(device, strlen(device), &d)) {
        snprintf(err, errcap, "unknown device '%s': expected " TITAN_DEVICE_GRAMMAR, device ? device : "(null)");
        return -EINVAL;
    }
    if (d.kind == TITAN_DEVICE_CPU) return titan_backend_cpu_open(blas_threads, out);
    const char *over = getenv("TITAN_CUDA_MODULE");
    if (d.kind == TITAN_DEVICE_AUTO && !(over && *over) && !s_nvidia_present()) {
        snprintf(why, whycap,
                 "no NVIDIA GPU here (neither /proc/driver/nvidia nor /dev/nvidia0): computing on the CPU");
        return titan_backend_cpu_open(blas_threads, out);
    }
    char msg[768] = "";
    titan_cuda_open_fn open_cuda = s_cuda_entry(msg, sizeof(msg));
    int rc = -ENOTSUP;
    if (open_cuda) {
        titan_cuda_opts dflt = {0};
        rc = open_cuda(d.kind == TITAN_DEVICE_AUTO ? 0 : d.index, opts ? opts : &dflt, out, msg, sizeof(msg));
        if (rc == 0) return 0;
    }
    if (d.kind == TITAN_DEVICE_CUDA) {
        snprintf(err, errcap, "device '%s' cannot be used: %s", device, msg);
        return rc;
    }
    snprintf(why, whycap, "CUDA is not usable (%s): computing on the CPU", msg);
    *why_warns = true;
    return titan_backend_cpu_open(blas_threads, out);
}
