/* benchutil.h - what the bench programs share: the clock, a sort order, command-line numbers. */
#ifndef TITAN_BENCH_BENCHUTIL_H
#define TITAN_BENCH_BENCHUTIL_H

#include <stdbool.h>

/* CLOCK_MONOTONIC in seconds. */
double bench_now(void);
/* qsort order of doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);
/* Parses a whole decimal integer in lo..hi into *out. Returns false (and leaves *out) otherwise. */
bool bench_parse_long(const char *s, long lo, long hi, long *out);
/* Parses "N[,N]..." (each in lo..hi, at most max of them) into sizes[0..*n). Returns false on any
 * other text, an empty list or too many sizes. */
bool bench_parse_sizes(const char *s, long lo, long hi, int *sizes, int max, int *n);

#endif
