/* clock.h - the clocks, read in one place: CLOCK_MONOTONIC for durations, timeouts and deadlines,
 * CLOCK_REALTIME for times shown to people or stored (timestamps in replies, logs, Redis). Plain C with no
 * dependency, so that any program (the CUDA module, a test compiling one source) can compile clock.c in. */
#ifndef TITAN_CORE_CLOCK_H
#define TITAN_CORE_CLOCK_H

#include <stdint.h>
#include <time.h>

/* ---- CLOCK_MONOTONIC: durations, timeouts ---- */

/* Seconds, with the fraction. */
double titan_clock_mono_s(void);
/* Milliseconds, with the fraction. */
double titan_clock_mono_ms(void);
/* Whole milliseconds (the nanoseconds truncated). */
int64_t titan_clock_mono_ms64(void);
/* Nanoseconds: a start point for titan_clock_ms_since and titan_clock_ns_since. */
int64_t titan_clock_mono_ns(void);
/* Milliseconds, with the fraction, since `t0` (a titan_clock_mono_ns reading). */
double titan_clock_ms_since(int64_t t0);
/* Nanoseconds since `t0` (a titan_clock_mono_ns reading); 0 if `t0` is not in the past. */
uint64_t titan_clock_ns_since(int64_t t0);
/* The CLOCK_MONOTONIC time `ns` nanoseconds from now, normalized: the deadline for pthread_cond_timedwait on
 * a condition variable whose clock is CLOCK_MONOTONIC (pthread_condattr_setclock). */
struct timespec titan_clock_mono_in(int64_t ns);

/* ---- CLOCK_REALTIME: the time of day ---- */

/* Seconds since the Unix epoch, with the fraction. */
double titan_clock_wall_s(void);
/* Whole milliseconds since the Unix epoch (the nanoseconds truncated). */
int64_t titan_clock_wall_ms(void);
/* Now, as a timespec (for formatting with gmtime_r and the milliseconds). */
struct timespec titan_clock_wall_ts(void);
/* The CLOCK_REALTIME time `ns` nanoseconds from now, normalized: the deadline for functions that take one on
 * CLOCK_REALTIME (pthread_timedjoin_np, a condition variable left on its default clock). */
struct timespec titan_clock_wall_in(int64_t ns);

#endif
