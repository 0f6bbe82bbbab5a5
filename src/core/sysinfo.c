/* sysinfo.c - reads the CPU model, core count and memory size of the host, and its live load. */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sysinfo.h"

void titan_sysinfo_read(titan_sysinfo *si)
{
    memset(si, 0, sizeof(*si));
    snprintf(si->cpu_model, sizeof(si->cpu_model), "unknown CPU");
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    si->cores = n > 0 ? (int)n : 1;
    char line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        while (fgets(line, sizeof(line), f)) {
            /* x86 says "model name", arm64 kernels may say "Model" or nothing */
            if (strncmp(line, "model name", 10) == 0 || strncmp(line, "Model", 5) == 0) {
                char *colon = strchr(line, ':');
                if (!colon) continue;
                colon++;
                while (*colon == ' ' || *colon == '\t') colon++;
                colon[strcspn(colon, "\n")] = '\0';
                if (*colon) snprintf(si->cpu_model, sizeof(si->cpu_model), "%s", colon);
                break;
            }
        }
        fclose(f);
    }
    f = fopen("/proc/meminfo", "r");
    if (f) {
        unsigned long long kb;
        while (fgets(line, sizeof(line), f)) {
            if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) {
                si->mem_total = (uint64_t)kb * 1024;
                break;
            }
        }
        fclose(f);
    }
}

int titan_sysinfo_memory(const char *meminfo_path, uint64_t *total, uint64_t *available)
{
    FILE *f = fopen(meminfo_path, "r");
    if (!f) return -errno;
    char line[256];
    unsigned long long kb, t = 0, a = 0;
    bool have_t = false, have_a = false;
    while ((!have_t || !have_a) && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) {
            t = kb;
            have_t = true;
        } else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            a = kb;
            have_a = true;
        }
    }
    fclose(f);
    if (!have_t || !have_a) return -ENODATA;
    *total = (uint64_t)t * 1024;
    *available = (uint64_t)(a > t ? t : a) * 1024;
    return 0;
}

int titan_sysinfo_cpu_ticks(const char *stat_path, uint64_t *busy, uint64_t *total)
{
    FILE *f = fopen(stat_path, "r");
    if (!f) return -errno;
    char line[512];
    bool ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    /* cpu  user nice system idle iowait irq softirq steal [guest guest_nice] (guest time is in user) */
    unsigned long long v[8] = {0};
    int n = ok ? sscanf(line, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                        &v[4], &v[5], &v[6], &v[7])
               : 0;
    if (n < 4) return -ENODATA;
    uint64_t idle = (uint64_t)v[3] + (uint64_t)v[4];
    uint64_t b = (uint64_t)v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    *busy = b;
    *total = b + idle;
    return 0;
}

int titan_sysinfo_read_temperature(const char *temp_path, double *celsius)
{
    FILE *f = fopen(temp_path, "r");
    if (!f) return -errno;
    long long milli;
    int n = fscanf(f, "%lld", &milli);
    int e = errno;
    fclose(f);
    if (n != 1) return n == EOF && e ? -e : -ENODATA;
    if (milli < -40000 || milli > 150000) return -ERANGE;
    *celsius = (double)milli / 1000.0;
    return 0;
}

/* Ranks a zone's type: lower is a better witness of the CPU's temperature. */
static int s_thermal_rank(const char *type)
{
    static const char *const cpu_types[] = {"x86_pkg_temp", "cpu-thermal", "cpu_thermal", "cpu0-thermal",
                                            "soc_thermal", "soc-thermal", "coretemp", "k10temp"};
    for (size_t i = 0; i < sizeof(cpu_types) / sizeof(cpu_types[0]); i++)
        if (strcmp(type, cpu_types[i]) == 0) return 0;
    if (strstr(type, "cpu") || strstr(type, "CPU")) return 1;
    if (strcmp(type, "acpitz") == 0) return 2;
    return 3;
}

int titan_sysinfo_find_cpu_thermal(const char *thermal_root, char *path, size_t cap)
{
    DIR *d = opendir(thermal_root);
    if (!d) return -ENOENT;
    int best_rank = 99;
    long best_index = -1;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char *end;
        if (strncmp(de->d_name, "thermal_zone", 12) != 0) continue;
        long index = strtol(de->d_name + 12, &end, 10);
        if (end == de->d_name + 12 || *end || index < 0) continue;
        char p[4096], type[128] = "";
        snprintf(p, sizeof(p), "%s/%s/type", thermal_root, de->d_name);
        FILE *f = fopen(p, "r");
        if (f) {
            if (!fgets(type, sizeof(type), f)) type[0] = '\0';
            fclose(f);
        }
        type[strcspn(type, "\n")] = '\0';
        snprintf(p, sizeof(p), "%s/%s/temp", thermal_root, de->d_name);
        double c;
        if (titan_sysinfo_read_temperature(p, &c) != 0) continue;
        int rank = s_thermal_rank(type);
        /* readdir order is arbitrary: among equals, the lowest zone number wins */
        if (rank < best_rank || (rank == best_rank && index < best_index)) {
            best_rank = rank;
            best_index = index;
        }
    }
    closedir(d);
    if (best_index < 0) return -ENOENT;
    int n = snprintf(path, cap, "%s/thermal_zone%ld/temp", thermal_root, best_index);
    if (n < 0 || (size_t)n >= cap) return -ENAMETOOLONG;
    return 0;
}
