/* benchutil.c - what the bench programs share (see benchutil.h). */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "benchutil.h"

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

bool bench_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool bench_parse_sizes(const char *s, long lo, long hi, int *sizes, int max, int *n)
{
    int count = 0;
    while (*s) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < lo || v > hi || count == max) return false;
        sizes[count++] = (int)v;
        if (*end == ',')
            end++;
        else if (*end)
            return false;
        s = end;
    }
    *n = count;
    return count > 0;
}
