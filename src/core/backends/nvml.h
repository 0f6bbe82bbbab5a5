/* nvml.h - GPU telemetry from NVML, loaded with dlopen when it is there (libnvidia-ml.so.1 comes with
 * the driver, not the toolkit): memory, utilization, temperature, power and clocks. */
#ifndef TITAN_WORKER_NVML_H
#define TITAN_WORKER_NVML_H

#include <stddef.h>

#include "backend.h"

typedef struct titan_nvml titan_nvml;

/* Loads `library` (NULL: "libnvidia-ml.so.1"), initializes NVML and finds the device at `pci_bus_id`
 * ("0000:01:00.0"), or at NVML index `index` when that is NULL. Returns the handle, or NULL with the
 * reason in why (the caller then reports those figures as unknown). */
titan_nvml *titan_nvml_open(const char *library, const char *pci_bus_id, int index, char *why, size_t whycap);
/* Writes the driver's version ("470.256.02") into buf. Returns 0, or -1 when NVML cannot tell. */
int titan_nvml_driver_version(titan_nvml *n, char *buf, size_t cap);
/* Sets the figures NVML reads now (has_* true) and leaves the others alone. */
void titan_nvml_sample(titan_nvml *n, titan_device_stats *st);
/* Shuts NVML down; takes NULL and sets *n to NULL. */
void titan_nvml_close(titan_nvml **n);

#endif
