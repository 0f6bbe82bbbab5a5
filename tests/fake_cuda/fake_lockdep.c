/* fake_lockdep.c - TEST ONLY: the lock-order checker behind fake_lockdep.h, linked into
 * titan-backend-cuda-fake.so.
 *
 * Mutexes are known by address, from their first lock to pthread_mutex_destroy (which forgets them, so that
 * a later mutex at the same address starts afresh). Each thread keeps a stack of the mutexes it holds, with
 * where it took them. Taking B while holding A records the order A -> B once, with both sites. A new order
 * A -> B when B already leads to A (directly or through other mutexes) is a lock inversion: two threads
 * following the two orders can deadlock. It is reported before the mutex is taken, so that the report is out
 * even when this very call then deadlocks. trylock never waits, so it records no order; what it takes counts
 * as held all the same. */
#define FAKE_LOCKDEP_NO_WRAP
#include "fake_lockdep.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define S_MAX_HELD 16   /* per thread: cuda.c and devpool.c nest two at most */
#define S_MAX_EDGES 512 /* distinct orders: a handful in practice */

typedef struct {
    const pthread_mutex_t *m;
    const char *file;
    int line;
} s_held;

/* `to` was taken at to_file:to_line while `from`, taken at from_file:from_line, was held. */
typedef struct {
    const pthread_mutex_t *from, *to;
    const char *from_file, *to_file;
    int from_line, to_line;
} s_edge;

static __thread s_held t_held[S_MAX_HELD];
static __thread int t_nheld;

static pthread_mutex_t s_graph_lock = PTHREAD_MUTEX_INITIALIZER; /* not checked: this file is not wrapped */
static s_edge s_edges[S_MAX_EDGES];
static int s_nedges;
static bool s_full_said;
static atomic_long s_inversions;

static const char *s_base(const char *file)
{
    const char *b = strrchr(file, '/');
    return b ? b + 1 : file;
}

static int s_find_edge(const pthread_mutex_t *from, const pthread_mutex_t *to)
{
    for (int i = 0; i < s_nedges; i++)
        if (s_edges[i].from == from && s_edges[i].to == to) return i;
    return -1;
}

/* A chain of orders from `start` to `goal` (graph lock held): writes its edges, in order, into path and
 * returns how many, or 0 when `goal` cannot be reached. Breadth first, so the chain is a shortest one. */
static int s_path(const pthread_mutex_t *start, const pthread_mutex_t *goal, int *path)
{
    int queue[S_MAX_EDGES], prev[S_MAX_EDGES];
    bool seen[S_MAX_EDGES] = {false};
    int head = 0, tail = 0;
    for (int i = 0; i < s_nedges; i++) {
        if (s_edges[i].from != start) continue;
        seen[i] = true;
        prev[i] = -1;
        queue[tail++] = i;
    }
    while (head < tail) {
        int e = queue[head++];
        if (s_edges[e].to == goal) {
            int n = 0;
            for (int x = e; x >= 0; x = prev[x]) n++;
            int k = n;
            for (int x = e; x >= 0; x = prev[x]) path[--k] = x;
            return n;
        }
        for (int i = 0; i < s_nedges; i++) {
            if (seen[i] || s_edges[i].from != s_edges[e].to) continue;
            seen[i] = true;
            prev[i] = e;
            queue[tail++] = i;
        }
    }
    return 0;
}

/* Records that m is being taken at file:line while the thread holds what t_held says; reports inversions. */
static void s_order(const pthread_mutex_t *m, const char *file, int line)
{
    for (int h = 0; h < t_nheld; h++) {
        if (t_held[h].m == m) {
            atomic_fetch_add(&s_inversions, 1);
            fprintf(stderr,
                    "fake_cuda: lock inversion: mutex %p taken at %s:%d while this thread already holds it (taken "
                    "at %s:%d): a self-deadlock\n",
                    (const void *)m, s_base(file), line, s_base(t_held[h].file), t_held[h].line);
        }
    }
    pthread_mutex_lock(&s_graph_lock);
    for (int h = 0; h < t_nheld; h++) {
        const s_held *a = &t_held[h];
        if (a->m == m || s_find_edge(a->m, m) >= 0) continue;
        int path[S_MAX_EDGES];
        int n = s_path(m, a->m, path);
        if (n > 0) {
            atomic_fetch_add(&s_inversions, 1);
            char rev[1024];
            size_t o = 0;
            for (int i = 0; i < n && o < sizeof(rev); i++) {
                const s_edge *e = &s_edges[path[i]];
                int w = snprintf(rev + o, sizeof(rev) - o, "%s%s:%d while holding %s:%d", i ? ", then " : "",
                                 s_base(e->to_file), e->to_line, s_base(e->from_file), e->from_line);
                if (w < 0) break;
                o += (size_t)w;
            }
            fprintf(stderr,
                    "fake_cuda: lock inversion: mutex %p taken at %s:%d while holding mutex %p (taken at %s:%d); "
                    "elsewhere the reverse order: %s\n",
                    (const void *)m, s_base(file), line, (const void *)a->m, s_base(a->file), a->line, rev);
        }
        if (s_nedges == S_MAX_EDGES) {
            if (!s_full_said) fprintf(stderr, "fake_cuda: lockdep: over %d lock orders, no more recorded\n", S_MAX_EDGES);
            s_full_said = true;
            continue;
        }
        /* Recorded even when it closes a cycle: each inversion is reported once, not on every lock. */
        s_edges[s_nedges++] = (s_edge){.from = a->m, .to = m, .from_file = a->file, .from_line = a->line,
                                       .to_file = file, .to_line = line};
    }
    pthread_mutex_unlock(&s_graph_lock);
}

static void s_push(pthread_mutex_t *m, const char *file, int line)
{
    if (t_nheld == S_MAX_HELD) {
        fprintf(stderr, "fake_cuda: lockdep: a thread holds over %d mutexes; %s:%d not tracked\n", S_MAX_HELD,
                s_base(file), line);
        return;
    }
    t_held[t_nheld++] = (s_held){.m = m, .file = file, .line = line};
}

int fake_lockdep_lock(pthread_mutex_t *m, const char *file, int line)
{
    s_order(m, file, line);
    int rc = pthread_mutex_lock(m);
    if (rc == 0) s_push(m, file, line);
    return rc;
}

int fake_lockdep_trylock(pthread_mutex_t *m, const char *file, int line)
{
    int rc = pthread_mutex_trylock(m);
    if (rc == 0) s_push(m, file, line);
    return rc;
}

int fake_lockdep_unlock(pthread_mutex_t *m, const char *file, int line)
{
    /* Not necessarily the last one taken: hand-over-hand unlocking is fine. */
    int h = t_nheld - 1;
    while (h >= 0 && t_held[h].m != m)
        h--;
    if (h < 0)
        fprintf(stderr, "fake_cuda: lockdep: mutex %p unlocked at %s:%d by a thread that does not hold it\n",
                (void *)m, s_base(file), line);
    else {
        memmove(&t_held[h], &t_held[h + 1], (size_t)(t_nheld - h - 1) * sizeof(t_held[0]));
        t_nheld--;
    }
    return pthread_mutex_unlock(m);
}

int fake_lockdep_destroy(pthread_mutex_t *m)
{
    pthread_mutex_lock(&s_graph_lock);
    int o = 0;
    for (int i = 0; i < s_nedges; i++)
        if (s_edges[i].from != m && s_edges[i].to != m) s_edges[o++] = s_edges[i];
    s_nedges = o;
    pthread_mutex_unlock(&s_graph_lock);
    return pthread_mutex_destroy(m);
}

int fake_lockdep_held(char *site, size_t cap)
{
    if (t_nheld > 0 && site && cap)
        snprintf(site, cap, "%s:%d", s_base(t_held[t_nheld - 1].file), t_held[t_nheld - 1].line);
    return t_nheld;
}

long fake_lockdep_inversions(void)
{
    return atomic_load(&s_inversions);
}
