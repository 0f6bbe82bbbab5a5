/* sysinfo.c - reads the CPU model, core count and memory size of the host. */
#include <stdio.h>
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
