/* nvml.c - NVML through dlopen (see nvml.h). The few declarations below are NVML's public C API
 * (nvml.h), restated so that titan builds without the driver's development files. */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvml.h"

#define S_NVML_SUCCESS 0
#define S_NVML_TEMPERATURE_GPU 0
#define S_NVML_CLOCK_SM 1
#define S_NVML_CLOCK_MEM 2

typedef void *s_nvml_device;
typedef struct {
    unsigned long long total, free, used;
} s_nvml_memory;
typedef struct {
    unsigned int gpu, memory;
} s_nvml_utilization;

struct titan_nvml {
    void *lib;
    s_nvml_device dev;
    int (*shutdown)(void);
    const char *(*error_string)(int);
    int (*driver_version)(char *, unsigned);
    int (*memory)(s_nvml_device, s_nvml_memory *);
    int (*utilization)(s_nvml_device, s_nvml_utilization *);
    int (*temperature)(s_nvml_device, int, unsigned *);
    int (*power)(s_nvml_device, unsigned *);
    int (*clock)(s_nvml_device, int, unsigned *);
};

static void *s_sym(void *lib, const char *name)
{
    return dlsym(lib, name);
}

titan_nvml *titan_nvml_open(const char *library, const char *pci_bus_id, int index, char *why, size_t whycap)
{
    const char *file = library ? library : "libnvidia-ml.so.1";
    void *lib = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(why, whycap, "NVML not loaded (%s): %s", file, dlerror());
        return NULL;
    }
    titan_nvml *n = calloc(1, sizeof(*n));
    if (!n) {
        dlclose(lib);
        snprintf(why, whycap, "out of memory");
        return NULL;
    }
    n->lib = lib;
    int (*init)(void);
    int (*by_pci)(const char *, s_nvml_device *);
    int (*by_index)(unsigned, s_nvml_device *);
    *(void **)&init = s_sym(lib, "nvmlInit_v2");
    *(void **)&by_pci = s_sym(lib, "nvmlDeviceGetHandleByPciBusId_v2");
    *(void **)&by_index = s_sym(lib, "nvmlDeviceGetHandleByIndex_v2");
    *(void **)&n->shutdown = s_sym(lib, "nvmlShutdown");
    *(void **)&n->error_string = s_sym(lib, "nvmlErrorString");
    *(void **)&n->driver_version = s_sym(lib, "nvmlSystemGetDriverVersion");
    *(void **)&n->memory = s_sym(lib, "nvmlDeviceGetMemoryInfo");
    *(void **)&n->utilization = s_sym(lib, "nvmlDeviceGetUtilizationRates");
    *(void **)&n->temperature = s_sym(lib, "nvmlDeviceGetTemperature");
    *(void **)&n->power = s_sym(lib, "nvmlDeviceGetPowerUsage");
    *(void **)&n->clock = s_sym(lib, "nvmlDeviceGetClockInfo");
    if (!init || !n->shutdown || (!by_pci && !by_index)) {
        snprintf(why, whycap, "%s lacks nvmlInit_v2 or the device lookups", file);
        goto fail;
    }
    int rc = init();
    if (rc != S_NVML_SUCCESS) {
        snprintf(why, whycap, "nvmlInit failed: %s", n->error_string ? n->error_string(rc) : "error");
        n->shutdown = NULL; /* nothing to shut down */
        goto fail;
    }
    rc = -1;
    if (pci_bus_id && pci_bus_id[0] && by_pci) rc = by_pci(pci_bus_id, &n->dev);
    if (rc != S_NVML_SUCCESS && index >= 0 && by_index) {
        rc = by_index((unsigned)index, &n->dev);
    } else if (rc != S_NVML_SUCCESS && by_index) {
        /* Some virtual machines report PCI addresses NVML does not match: with one GPU there is no
         * doubt which it is. With several, NVML's order may not be CUDA's, so no guess. */
        int (*count)(unsigned *);
        *(void **)&count = s_sym(lib, "nvmlDeviceGetCount_v2");
        unsigned ndev = 0;
        if (count && count(&ndev) == S_NVML_SUCCESS && ndev == 1) rc = by_index(0, &n->dev);
    }
    if (rc != S_NVML_SUCCESS) {
        snprintf(why, whycap, "NVML does not know the device %s: %s",
                 pci_bus_id && pci_bus_id[0] ? pci_bus_id : "",
                 rc >= 0 && n->error_string ? n->error_string(rc) : "no lookup");
        goto fail;
    }
    return n;
fail:
    titan_nvml_close(&n);
    return NULL;
}

int titan_nvml_driver_version(titan_nvml *n, char *buf, size_t cap)
{
    if (!n || !n->driver_version || cap < 2) return -1;
    char v[96] = "";
    if (n->driver_version(v, sizeof(v)) != S_NVML_SUCCESS || !v[0]) return -1;
    v[sizeof(v) - 1] = '\0';
    snprintf(buf, cap, "%s", v);
    return 0;
}

void titan_nvml_sample(titan_nvml *n, titan_device_stats *st)
{
    if (!n) return;
    s_nvml_memory m;
    if (n->memory && n->memory(n->dev, &m) == S_NVML_SUCCESS && m.total > 0) {
        st->has_memory = true;
        st->memory_total_bytes = m.total;
        st->memory_used_bytes = m.used;
    }
    s_nvml_utilization u;
    if (n->utilization && n->utilization(n->dev, &u) == S_NVML_SUCCESS && u.gpu <= 100) {
        st->has_utilization = true;
        st->utilization = u.gpu / 100.0;
    }
    unsigned v;
    if (n->temperature && n->temperature(n->dev, S_NVML_TEMPERATURE_GPU, &v) == S_NVML_SUCCESS) {
        st->has_temperature = true;
        st->temperature_c = v;
    }
    if (n->power && n->power(n->dev, &v) == S_NVML_SUCCESS) {
        st->has_power = true;
        st->power_w = v / 1000.0; /* milliwatts */
    }
    unsigned sm, mem;
    if (n->clock && n->clock(n->dev, S_NVML_CLOCK_SM, &sm) == S_NVML_SUCCESS &&
        n->clock(n->dev, S_NVML_CLOCK_MEM, &mem) == S_NVML_SUCCESS) {
        st->has_clocks = true;
        st->sm_clock_mhz = sm;
        st->mem_clock_mhz = mem;
    }
}

void titan_nvml_close(titan_nvml **p)
{
    if (!p || !*p) return;
    titan_nvml *n = *p;
    if (n->shutdown) n->shutdown();
    if (n->lib) dlclose(n->lib);
    free(n);
    *p = NULL;
}
