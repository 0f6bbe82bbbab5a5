/* clock.c - the clocks (see clock.h). */
#include <time.h>

#include "clock.h"

static struct timespec s_read(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t;
}

static struct timespec s_in(clockid_t id, int64_t ns)
{
    struct timespec t = s_read(id);
    int64_t n = (int64_t)t.tv_nsec + ns;
    t.tv_sec += (time_t)(n / 1000000000);
    t.tv_nsec = (long)(n % 1000000000);
    if (t.tv_nsec < 0) {
        t.tv_sec--;
        t.tv_nsec += 1000000000L;
    }
    return t;
}

double titan_clock_mono_s(void)
{
    struct timespec t = s_read(CLOCK_MONOTONIC);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

double titan_clock_mono_ms(void)
{
    struct timespec t = s_read(CLOCK_MONOTONIC);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

int64_t titan_clock_mono_ms64(void)
{
    struct timespec t = s_read(CLOCK_MONOTONIC);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int64_t titan_clock_mono_ns(void)
{
    struct timespec t = s_read(CLOCK_MONOTONIC);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

double titan_clock_ms_since(int64_t t0)
{
    return (double)(titan_clock_mono_ns() - t0) / 1e6;
}

uint64_t titan_clock_ns_since(int64_t t0)
{
    int64_t ns = titan_clock_mono_ns() - t0;
    return ns > 0 ? (uint64_t)ns : 0;
}

struct timespec titan_clock_mono_in(int64_t ns)
{
    return s_in(CLOCK_MONOTONIC, ns);
}

double titan_clock_wall_s(void)
{
    struct timespec t = s_read(CLOCK_REALTIME);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int64_t titan_clock_wall_ms(void)
{
    struct timespec t = s_read(CLOCK_REALTIME);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

struct timespec titan_clock_wall_ts(void)
{
    return s_read(CLOCK_REALTIME);
}

struct timespec titan_clock_wall_in(int64_t ns)
{
    return s_in(CLOCK_REALTIME, ns);
}
