/* cuda_err.c - CUDA and cuBLAS failures to reply codes (see cuda_err.h). The numbers are those of
 * driver_types.h and cublas_api.h, which CUDA keeps stable across releases; cuda.c checks them
 * against the real headers when it is compiled. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cuda_err.h"

titan_cuda_class titan_cuda_classify(int e)
{
    switch (e) {
    case 0: /* cudaSuccess */
        return TITAN_CUDA_OK;
    case 2: /* cudaErrorMemoryAllocation */
        return TITAN_CUDA_OOM;
    case 35:  /* cudaErrorInsufficientDriver */
    case 100: /* cudaErrorNoDevice */
    case 101: /* cudaErrorInvalidDevice */
    case 46:  /* cudaErrorDevicesUnavailable (exclusive-process mode, taken) */
    case 803: /* cudaErrorSystemDriverMismatch */
    case 804: /* cudaErrorCompatNotSupportedOnDevice */
        return TITAN_CUDA_NODEV;
    case 209: /* cudaErrorNoKernelImageForDevice */
    case 222: /* cudaErrorUnsupportedPtxVersion */
        return TITAN_CUDA_NOCODE;
    /* These leave the context unusable: CUDA answers them to every later call in the process. */
    case 214: /* cudaErrorECCUncorrectable */
    case 220: /* cudaErrorNvlinkUncorrectable */
    case 700: /* cudaErrorIllegalAddress */
    case 702: /* cudaErrorLaunchTimeout */
    case 709: /* cudaErrorContextIsDestroyed */
    case 710: /* cudaErrorAssert */
    case 714: /* cudaErrorHardwareStackError */
    case 715: /* cudaErrorIllegalInstruction */
    case 716: /* cudaErrorMisalignedAddress */
    case 717: /* cudaErrorInvalidAddressSpace */
    case 718: /* cudaErrorInvalidPc */
    case 719: /* cudaErrorLaunchFailure */
    case 4:   /* cudaErrorCudartUnloading */
    case 999: /* cudaErrorUnknown: after one, nothing can be trusted */
        return TITAN_CUDA_STICKY;
    default:
        return TITAN_CUDA_FAILED;
    }
}

titan_cuda_class titan_cublas_classify(int s)
{
    switch (s) {
    case 0: /* CUBLAS_STATUS_SUCCESS */
        return TITAN_CUDA_OK;
    case 3: /* CUBLAS_STATUS_ALLOC_FAILED */
        return TITAN_CUDA_OOM;
    case 8: /* CUBLAS_STATUS_ARCH_MISMATCH */
        return TITAN_CUDA_NOCODE;
    case 1: /* CUBLAS_STATUS_NOT_INITIALIZED: no driver or device behind the handle */
        return TITAN_CUDA_NODEV;
    default: /* INVALID_VALUE, MAPPING_ERROR, EXECUTION_FAILED, INTERNAL_ERROR, NOT_SUPPORTED...: the
                caller asks the runtime whether the context survived */
        return TITAN_CUDA_FAILED;
    }
}

const char *titan_cublas_status_name(int s, char *buf, size_t cap)
{
    static const struct {
        int v;
        const char *name;
    } names[] = {
        {0, "CUBLAS_STATUS_SUCCESS"},           {1, "CUBLAS_STATUS_NOT_INITIALIZED"},
        {3, "CUBLAS_STATUS_ALLOC_FAILED"},      {7, "CUBLAS_STATUS_INVALID_VALUE"},
        {8, "CUBLAS_STATUS_ARCH_MISMATCH"},     {11, "CUBLAS_STATUS_MAPPING_ERROR"},
        {13, "CUBLAS_STATUS_EXECUTION_FAILED"}, {14, "CUBLAS_STATUS_INTERNAL_ERROR"},
        {15, "CUBLAS_STATUS_NOT_SUPPORTED"},    {16, "CUBLAS_STATUS_LICENSE_ERROR"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].v == s) return names[i].name;
    snprintf(buf, cap, "CUBLAS_STATUS_%d", s);
    return buf;
}

static void s_bytes(char *buf, size_t cap, uint64_t b)
{
    if (b >= (1ULL << 30))
        snprintf(buf, cap, "%.2f GiB", (double)b / (double)(1ULL << 30));
    else if (b >= (1ULL << 20))
        snprintf(buf, cap, "%.1f MiB", (double)b / (double)(1ULL << 20));
    else
        snprintf(buf, cap, "%" PRIu64 " bytes", b);
}

void titan_cuda_error_reply(titan_error *err, titan_cuda_class cls, const titan_cuda_failure *f)
{
    const char *what = f->what ? f->what : "CUDA";
    const char *name = f->name ? f->name : "error";
    char need[32], freeb[32], total[32];
    s_bytes(need, sizeof(need), f->need_bytes);
    s_bytes(freeb, sizeof(freeb), f->free_bytes);
    s_bytes(total, sizeof(total), f->total_bytes);
    switch (cls) {
    case TITAN_CUDA_OOM:
        if (f->total_bytes && f->need_bytes > f->total_bytes) {
            err->code = "too_large";
            snprintf(
                err->msg, sizeof(err->msg),
                "the request needs %s of GPU memory but the GPU has %s in all (%s: %s); split the product "
                "(titan matmul --split) or use the CPU backend",
                need, total, what, name);
        } else {
            err->code = "device_error";
            snprintf(
                err->msg, sizeof(err->msg),
                "GPU out of memory: the request needs %s, %s of %s is free (%s: %s); free resident tensors "
                "(tensor_free), retry later or send it to another backend",
                need, f->free_known ? freeb : "an unknown amount", total, what, name);
        }
        return;
    case TITAN_CUDA_STICKY:
        err->code = "device_error";
        snprintf(
            err->msg, sizeof(err->msg),
            "the GPU's CUDA context is lost (%s: %s%s%s): this worker reports itself not ready and must be "
            "restarted",
            what, name, f->text ? ", " : "", f->text ? f->text : "");
        return;
    case TITAN_CUDA_NODEV:
        err->code = "device_error";
        snprintf(err->msg, sizeof(err->msg), "the GPU is not usable (%s: %s%s%s)", what, name,
                 f->text ? ", " : "", f->text ? f->text : "");
        return;
    case TITAN_CUDA_NOCODE:
        err->code = "device_error";
        snprintf(
            err->msg, sizeof(err->msg),
            "this build has no GPU code for the device (%s: %s); rebuild with -Dcuda-arch set to its compute "
            "capability",
            what, name);
        return;
    default:
        err->code = "device_error";
        snprintf(err->msg, sizeof(err->msg), "%s failed: %s%s%s", what, name, f->text ? " (" : "",
                 f->text ? f->text : "");
        if (f->text) strncat(err->msg, ")", sizeof(err->msg) - strlen(err->msg) - 1);
        return;
    }
}
