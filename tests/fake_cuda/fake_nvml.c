/* fake_nvml.c - TEST ONLY: a tiny libnvidia-ml stand-in (fake-nvml.so) for tests/integration/test_cuda_fake.py,
 * loaded by src/core/backends/nvml.c through $TITAN_NVML_LIBRARY. One device, at PCI 0000:01:00.0 (the fake
 * CUDA runtime's), with fixed figures; power is "not supported" (NVML_ERROR_NOT_SUPPORTED), as on many
 * GeForce boards, so that the worker must report power_w as null. The declarations are NVML's public C API. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define EXPORT __attribute__((visibility("default")))

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
};

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;
typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

/* The figures test_cuda_fake.py expects. */
#define FAKE_NVML_DRIVER "470.256.02"
#define FAKE_NVML_PCI "0000:01:00.0"
#define FAKE_NVML_MEM_TOTAL 12884901888ULL /* 12 GiB */
#define FAKE_NVML_MEM_USED 536870912ULL    /* 512 MiB */
#define FAKE_NVML_UTIL_GPU 37
#define FAKE_NVML_TEMP_C 54
#define FAKE_NVML_SM_MHZ 1076
#define FAKE_NVML_MEM_MHZ 3505

static struct fake_dev {
    int id;
} s_dev = {1};
static int s_inited;

EXPORT int nvmlInit_v2(void)
{
    s_inited++;
    return NVML_SUCCESS;
}

EXPORT int nvmlShutdown(void)
{
    if (!s_inited) return NVML_ERROR_UNINITIALIZED;
    s_inited--;
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(int rc)
{
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    default: return "Unknown Error";
    }
}

EXPORT int nvmlSystemGetDriverVersion(char *buf, unsigned int len)
{
    if (!s_inited) return NVML_ERROR_UNINITIALIZED;
    if (!buf || len < sizeof(FAKE_NVML_DRIVER)) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(buf, len, "%s", FAKE_NVML_DRIVER);
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetHandleByPciBusId_v2(const char *pci, void **dev)
{
    if (!s_inited) return NVML_ERROR_UNINITIALIZED;
    if (!pci || !dev) return NVML_ERROR_INVALID_ARGUMENT;
    /* FAKE_NVML_PCI_UNKNOWN=1: a virtual machine whose PCI address NVML does not match. */
    if (getenv("FAKE_NVML_PCI_UNKNOWN")) return NVML_ERROR_NOT_FOUND;
    /* NVML also accepts the 8-digit domain form ("00000000:01:00.0"). */
    if (strcasecmp(pci, FAKE_NVML_PCI) != 0 && strcasecmp(pci, "0000" FAKE_NVML_PCI) != 0) return NVML_ERROR_NOT_FOUND;
    *dev = &s_dev;
    return NVML_SUCCESS;
}

/* One GPU, or FAKE_NVML_COUNT of them (only the first answers). */
EXPORT int nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!s_inited) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    const char *n = getenv("FAKE_NVML_COUNT");
    *count = n ? (unsigned)atoi(n) : 1;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **dev)
{
    if (!s_inited) return NVML_ERROR_UNINITIALIZED;
    if (!dev) return NVML_ERROR_INVALID_ARGUMENT;
    if (index != 0) return NVML_ERROR_NOT_FOUND;
    *dev = &s_dev;
    return NVML_SUCCESS;
}

static int s_check(void *dev)
{
    if (!s_inited) return NVML_ERROR_UNINITIALIZED;
    return dev == &s_dev ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

EXPORT int nvmlDeviceGetMemoryInfo(void *dev, nvmlMemory_t *m)
{
    int rc = s_check(dev);
    if (rc || !m) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    m->total = FAKE_NVML_MEM_TOTAL;
    m->used = FAKE_NVML_MEM_USED;
    m->free = FAKE_NVML_MEM_TOTAL - FAKE_NVML_MEM_USED;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetUtilizationRates(void *dev, nvmlUtilization_t *u)
{
    int rc = s_check(dev);
    if (rc || !u) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    u->gpu = FAKE_NVML_UTIL_GPU;
    u->memory = 12;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetTemperature(void *dev, int sensor, unsigned int *t)
{
    int rc = s_check(dev);
    if (rc || !t) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    if (sensor != 0) return NVML_ERROR_NOT_SUPPORTED; /* NVML_TEMPERATURE_GPU only */
    *t = FAKE_NVML_TEMP_C;
    return NVML_SUCCESS;
}

EXPORT int nvmlDeviceGetPowerUsage(void *dev, unsigned int *mw)
{
    int rc = s_check(dev);
    if (rc || !mw) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    return NVML_ERROR_NOT_SUPPORTED;
}

EXPORT int nvmlDeviceGetClockInfo(void *dev, int type, unsigned int *mhz)
{
    int rc = s_check(dev);
    if (rc || !mhz) return rc ? rc : NVML_ERROR_INVALID_ARGUMENT;
    switch (type) {
    case 1: *mhz = FAKE_NVML_SM_MHZ; return NVML_SUCCESS;  /* NVML_CLOCK_SM */
    case 2: *mhz = FAKE_NVML_MEM_MHZ; return NVML_SUCCESS; /* NVML_CLOCK_MEM */
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
}
