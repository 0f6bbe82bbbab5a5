/* test_cuda_err.c - CUDA runtime and cuBLAS failures to reply codes (src/core/backends/cuda_err.c):
 * classes of the stable enum values, and the codes and sizes in the replies. Runs without CUDA. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cuda_err.h"

static void test_runtime_classes(void **state)
{
    (void)state;
    assert_int_equal(titan_cuda_classify(0), TITAN_CUDA_OK);
    assert_int_equal(titan_cuda_classify(2), TITAN_CUDA_OOM);      /* cudaErrorMemoryAllocation */
    assert_int_equal(titan_cuda_classify(35), TITAN_CUDA_NODEV);   /* cudaErrorInsufficientDriver */
    assert_int_equal(titan_cuda_classify(100), TITAN_CUDA_NODEV);  /* cudaErrorNoDevice */
    assert_int_equal(titan_cuda_classify(101), TITAN_CUDA_NODEV);  /* cudaErrorInvalidDevice */
    assert_int_equal(titan_cuda_classify(209), TITAN_CUDA_NOCODE); /* cudaErrorNoKernelImageForDevice */
    assert_int_equal(titan_cuda_classify(222), TITAN_CUDA_NOCODE); /* cudaErrorUnsupportedPtxVersion */
    const int sticky[] = {214, 220, 700, 702, 709, 710, 714, 715, 716, 717, 718, 719, 999};
    for (size_t i = 0; i < sizeof(sticky) / sizeof(sticky[0]); i++)
        assert_int_equal(titan_cuda_classify(sticky[i]), TITAN_CUDA_STICKY);
    /* Not sticky: bad arguments, too many resources for one launch, a busy device. */
    assert_int_equal(titan_cuda_classify(1), TITAN_CUDA_FAILED);   /* cudaErrorInvalidValue */
    assert_int_equal(titan_cuda_classify(701), TITAN_CUDA_FAILED); /* cudaErrorLaunchOutOfResources */
    assert_int_equal(titan_cuda_classify(600), TITAN_CUDA_FAILED); /* cudaErrorNotReady */
}

static void test_cublas_classes(void **state)
{
    (void)state;
    char buf[40];
    assert_int_equal(titan_cublas_classify(0), TITAN_CUDA_OK);
    assert_int_equal(titan_cublas_classify(3), TITAN_CUDA_OOM);
    assert_int_equal(titan_cublas_classify(8), TITAN_CUDA_NOCODE);
    assert_int_equal(titan_cublas_classify(1), TITAN_CUDA_NODEV);
    assert_int_equal(titan_cublas_classify(13), TITAN_CUDA_FAILED);
    assert_int_equal(titan_cublas_classify(14), TITAN_CUDA_FAILED);
    assert_string_equal(titan_cublas_status_name(3, buf, sizeof(buf)), "CUBLAS_STATUS_ALLOC_FAILED");
    assert_string_equal(titan_cublas_status_name(13, buf, sizeof(buf)), "CUBLAS_STATUS_EXECUTION_FAILED");
    assert_string_equal(titan_cublas_status_name(42, buf, sizeof(buf)), "CUBLAS_STATUS_42");
}

static void test_oom_replies(void **state)
{
    (void)state;
    titan_error err;
    /* Could never fit: too_large, with both sizes. */
    titan_cuda_failure f = {.what = "cudaMalloc",
                            .name = "cudaErrorMemoryAllocation",
                            .need_bytes = 20ULL << 30,
                            .total_bytes = 12ULL << 30};
    titan_cuda_error_reply(&err, TITAN_CUDA_OOM, &f);
    assert_string_equal(err.code, "too_large");
    assert_non_null(strstr(err.msg, "20.00 GiB"));
    assert_non_null(strstr(err.msg, "12.00 GiB"));
    /* Fits an empty GPU but not now: device_error, with what is free. */
    f.need_bytes = 3ULL << 30;
    f.free_bytes = 512ULL << 20;
    f.free_known = 1;
    titan_cuda_error_reply(&err, TITAN_CUDA_OOM, &f);
    assert_string_equal(err.code, "device_error");
    assert_non_null(strstr(err.msg, "out of memory"));
    assert_non_null(strstr(err.msg, "3.00 GiB"));
    assert_non_null(strstr(err.msg, "512.0 MiB"));
    assert_non_null(strstr(err.msg, "tensor_free"));
    /* None free is a figure too. */
    f.free_bytes = 0;
    titan_cuda_error_reply(&err, TITAN_CUDA_OOM, &f);
    assert_non_null(strstr(err.msg, "0 bytes of"));
    /* Free memory unknown: said so, not a made-up figure. */
    f.free_known = 0;
    titan_cuda_error_reply(&err, TITAN_CUDA_OOM, &f);
    assert_non_null(strstr(err.msg, "an unknown amount"));
}

static void test_other_replies(void **state)
{
    (void)state;
    titan_error err;
    titan_cuda_failure f = {.what = "cublasSgemm",
                            .name = "cudaErrorIllegalAddress",
                            .text = "an illegal memory access was encountered",
                            .total_bytes = 12ULL << 30};
    titan_cuda_error_reply(&err, TITAN_CUDA_STICKY, &f);
    assert_string_equal(err.code, "device_error");
    assert_non_null(strstr(err.msg, "lost"));
    assert_non_null(strstr(err.msg, "restarted"));
    assert_non_null(strstr(err.msg, "cudaErrorIllegalAddress"));
    f.name = "cudaErrorNoKernelImageForDevice";
    titan_cuda_error_reply(&err, TITAN_CUDA_NOCODE, &f);
    assert_string_equal(err.code, "device_error");
    assert_non_null(strstr(err.msg, "-Dcuda-arch"));
    f.name = "CUBLAS_STATUS_INTERNAL_ERROR";
    f.text = NULL;
    titan_cuda_error_reply(&err, TITAN_CUDA_FAILED, &f);
    assert_string_equal(err.code, "device_error");
    assert_string_equal(err.msg, "cublasSgemm failed: CUBLAS_STATUS_INTERNAL_ERROR");
    f.name = "cudaErrorNoDevice";
    f.text = "no CUDA-capable device is detected";
    titan_cuda_error_reply(&err, TITAN_CUDA_NODEV, &f);
    assert_string_equal(err.code, "device_error");
    assert_non_null(strstr(err.msg, "no CUDA-capable device"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runtime_classes),
        cmocka_unit_test(test_cublas_classes),
        cmocka_unit_test(test_oom_replies),
        cmocka_unit_test(test_other_replies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
