/* batchq.c - per-model request queues for dynamic batching (batchq.h). Each model's queue is a ring of its
 * capacity; models are few (the registry's), so they are a plain array searched by name. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "batchq.h"

typedef struct {
    char name[129];
    titan_batchq_rules rules;
    void **ring;     /* rules.capacity slots */
    int64_t *since;  /* when each queued job arrived */
    size_t head, n;
    int running;     /* batches of this model on executors */
} s_model;

struct titan_batchq {
    s_model *m[TITAN_BATCHQ_MODELS];
    size_t nm;
    size_t turn; /* the model to look at first next time */
    size_t total;
};

titan_batchq *titan_batchq_new(void)
{
    return calloc(1, sizeof(titan_batchq));
}

void titan_batchq_free(titan_batchq **qp)
{
    titan_batchq *q = qp ? *qp : NULL;
    if (!q) return;
    for (size_t i = 0; i < q->nm; i++) {
        free(q->m[i]->ring);
        free(q->m[i]->since);
        free(q->m[i]);
    }
    free(q);
    *qp = NULL;
}

static s_model *s_find(const titan_batchq *q, const char *model)
{
    for (size_t i = 0; i < q->nm; i++)
        if (strcmp(q->m[i]->name, model) == 0) return q->m[i];
    return NULL;
}

int titan_batchq_push(titan_batchq *q, const char *model, const titan_batchq_rules *rules, void *job, int64_t now_ns)
{
    s_model *m = s_find(q, model);
    if (!m) {
        if (q->nm >= TITAN_BATCHQ_MODELS || strlen(model) >= sizeof(m->name)) return -E2BIG;
        m = calloc(1, sizeof(*m));
        if (!m) return -ENOMEM;
        m->rules = *rules;
        if (m->rules.capacity < 1) m->rules.capacity = 1;
        if (m->rules.max_batch < 1) m->rules.max_batch = 1;
        m->ring = calloc((size_t)m->rules.capacity, sizeof(void *));
        m->since = calloc((size_t)m->rules.capacity, sizeof(int64_t));
        if (!m->ring || !m->since) {
            free(m->ring);
            free(m->since);
            free(m);
            return -ENOMEM;
        }
        strcpy(m->name, model);
        q->m[q->nm++] = m;
    }
    if (m->n >= (size_t)m->rules.capacity) return -EBUSY;
    size_t slot = (m->head + m->n) % (size_t)m->rules.capacity;
    m->ring[slot] = job;
    m->since[slot] = now_ns;
    m->n++;
    q->total++;
    return 0;
}

static bool s_ready(const s_model *m, int64_t now_ns)
{
    if (m->n == 0) return false;
    if (m->n >= (size_t)m->rules.max_batch || m->running == 0) return true;
    return now_ns - m->since[m->head] >= m->rules.max_delay_ns;
}

size_t titan_batchq_pop(titan_batchq *q, int64_t now_ns, void **jobs, size_t max, const char **model)
{
    for (size_t k = 0; k < q->nm; k++) {
        size_t i = (q->turn + k) % q->nm;
        s_model *m = q->m[i];
        if (!s_ready(m, now_ns)) continue;
        size_t take = m->n;
        if (take > (size_t)m->rules.max_batch) take = (size_t)m->rules.max_batch;
        if (take > max) take = max;
        for (size_t j = 0; j < take; j++) {
            jobs[j] = m->ring[m->head];
            m->ring[m->head] = NULL;
            m->head = (m->head + 1) % (size_t)m->rules.capacity;
        }
        m->n -= take;
        q->total -= take;
        m->running++;
        q->turn = (i + 1) % q->nm;
        *model = m->name;
        return take;
    }
    return 0;
}

void titan_batchq_done(titan_batchq *q, const char *model)
{
    s_model *m = s_find(q, model);
    if (m && m->running > 0) m->running--;
}

int64_t titan_batchq_next_ns(const titan_batchq *q)
{
    int64_t best = -1;
    for (size_t i = 0; i < q->nm; i++) {
        const s_model *m = q->m[i];
        if (m->n == 0) continue;
        int64_t t = m->since[m->head] + m->rules.max_delay_ns;
        if (best < 0 || t < best) best = t;
    }
    return best;
}

size_t titan_batchq_len(const titan_batchq *q)
{
    return q->total;
}

void titan_batchq_each(const titan_batchq *q, void (*fn)(void *arg, const char *model, size_t waiting), void *arg)
{
    for (size_t i = 0; i < q->nm; i++) fn(arg, q->m[i]->name, q->m[i]->n);
}

void titan_batchq_take_all(titan_batchq *q, void (*fn)(void *arg, void *job), void *arg)
{
    for (size_t i = 0; i < q->nm; i++) {
        s_model *m = q->m[i];
        while (m->n) {
            void *job = m->ring[m->head];
            m->ring[m->head] = NULL;
            m->head = (m->head + 1) % (size_t)m->rules.capacity;
            m->n--;
            q->total--;
            fn(arg, job);
        }
    }
}
