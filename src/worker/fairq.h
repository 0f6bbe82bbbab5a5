/* fairq.h - per-client FIFO queues served in turn, so that one client's flood cannot
 * starve the others. */
#ifndef TITAN_WORKER_FAIRQ_H
#define TITAN_WORKER_FAIRQ_H

#include <stddef.h>

#define TITAN_FAIRQ_MAX_KEY 256

typedef struct titan_fairq titan_fairq;

/* Returns an empty queue, or NULL when out of memory. */
titan_fairq *titan_fairq_new(void);
/* Frees the queue and its bookkeeping (not the items); takes NULL, sets *q to NULL. */
void titan_fairq_destroy(titan_fairq **q);

/* Appends `item` to the queue of client `key` (1..TITAN_FAIRQ_MAX_KEY bytes).
 * Returns 0, -EINVAL for a bad key or NULL item, -ENOMEM. */
int titan_fairq_push(titan_fairq *q, const void *key, size_t keylen, void *item);
/* Removes and returns the oldest item of the next client in turn, or NULL when empty. */
void *titan_fairq_pop(titan_fairq *q);
/* The item titan_fairq_pop would return next, left in the queue; NULL when empty. */
void *titan_fairq_peek(const titan_fairq *q);
/* Items queued in all, and for one client. */
size_t titan_fairq_len(const titan_fairq *q);
size_t titan_fairq_client_len(const titan_fairq *q, const void *key, size_t keylen);
/* Clients that have items queued. */
size_t titan_fairq_clients(const titan_fairq *q);

#endif
