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

#endif
