/* fake_lockdep.h - TEST ONLY: a small lock-order checker for the CUDA backend over the fake runtime.
 * tests/fake_cuda/meson.build force-includes this header (-include) into cuda.c and devpool.c, and only
 * there, so that every pthread mutex they lock, try or unlock goes through fake_lockdep.c with its lock
 * site. fake_lockdep.c keeps each thread's held mutexes and a graph of the orders seen (A held while B is
 * taken); an order that closes a cycle is a lock inversion, reported on stderr when it is first seen, even
 * if the run never deadlocks. fake_cuda.c asks it whether the calling thread holds a lock when it makes a
 * device-wide wait (cudaFree, cudaMalloc, cudaStreamSynchronize...).
 *
 * Define FAKE_LOCKDEP_NO_WRAP before including it for the declarations alone (fake_lockdep.c and
 * fake_cuda.c, whose own locks are not checked). */
#ifndef FAKE_LOCKDEP_H
#define FAKE_LOCKDEP_H

#include <pthread.h>
#include <stddef.h>

int fake_lockdep_lock(pthread_mutex_t *m, const char *file, int line);
int fake_lockdep_trylock(pthread_mutex_t *m, const char *file, int line);
int fake_lockdep_unlock(pthread_mutex_t *m, const char *file, int line);
int fake_lockdep_destroy(pthread_mutex_t *m);

/* How many checked mutexes the calling thread holds; writes the most recent one's lock site ("devpool.c:81")
 * into site[cap] when it holds any. */
int fake_lockdep_held(char *site, size_t cap);
/* Lock inversions seen so far in this process (a thread taking a mutex it holds counts as one too). */
long fake_lockdep_inversions(void);

#ifndef FAKE_LOCKDEP_NO_WRAP
#define pthread_mutex_lock(m) fake_lockdep_lock((m), __FILE__, __LINE__)
#define pthread_mutex_trylock(m) fake_lockdep_trylock((m), __FILE__, __LINE__)
#define pthread_mutex_unlock(m) fake_lockdep_unlock((m), __FILE__, __LINE__)
#define pthread_mutex_destroy(m) fake_lockdep_destroy(m)
#endif

#endif
