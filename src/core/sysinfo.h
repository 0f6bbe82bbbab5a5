/* sysinfo.h - what the host offers: CPU model, cores, memory. */
#ifndef TITAN_WORKER_SYSINFO_H
#define TITAN_WORKER_SYSINFO_H

#include <stdint.h>

typedef struct {
    char cpu_model[256];
    int cores;           /* online logical CPUs */
    uint64_t mem_total;  /* bytes */
} titan_sysinfo;

/* Fills `si` from /proc and sysconf; unknown fields get "unknown CPU" / 0. Never fails. */
void titan_sysinfo_read(titan_sysinfo *si);

/* The live figures below take their file as a parameter (/proc/meminfo, /proc/stat,
 * /sys/class/thermal), so that tests can point them at fixtures. */

/* Reads MemTotal and MemAvailable (bytes) from a meminfo file. Returns 0, -errno when the file
 * cannot be read, or -ENODATA when either line is missing. */
int titan_sysinfo_memory(const char *meminfo_path, uint64_t *total, uint64_t *available);
/* Reads the aggregate "cpu" line of a /proc/stat file: *busy is the non-idle time and *total all
 * time, in clock ticks since boot (iowait counts as idle). Returns 0, -errno, or -ENODATA. */
int titan_sysinfo_cpu_ticks(const char *stat_path, uint64_t *busy, uint64_t *total);
/* Finds the thermal zone under `thermal_root` (/sys/class/thermal) that best tells the CPU's
 * temperature: a CPU package or SoC zone first, else the first zone with a plausible reading.
 * Writes the path of its "temp" file into path. Returns 0, or -ENOENT when there is none. */
int titan_sysinfo_find_cpu_thermal(const char *thermal_root, char *path, size_t cap);
/* Reads a thermal zone's "temp" file (millidegrees) into *celsius. Returns 0, -errno, or
 * -ERANGE for a reading outside -40..150 degrees (a sensor that is absent or broken). */
int titan_sysinfo_read_temperature(const char *temp_path, double *celsius);

#endif
