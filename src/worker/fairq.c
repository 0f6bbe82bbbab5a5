/* fairq.c - round-robin over clients, FIFO within a client. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fairq.h"

typedef struct s_node {
    void *item;
    struct s_node *next;
} s_node;

typedef struct s_client {
    unsigned char key[TITAN_FAIRQ_MAX_KEY];
    size_t keylen;
    s_node *head, *tail;
    size_t n;
    struct s_client *next; /* ring of clients with items */
} s_client;

struct titan_fairq {
    s_client *cursor; /* the client served next; NULL when empty */
    size_t len;
    size_t clients;
};

titan_fairq *titan_fairq_new(void)
{
    return calloc(1, sizeof(titan_fairq));
}

/* Finds the client with `key` in the ring, or NULL. */
static s_client *s_find(const titan_fairq *q, const void *key, size_t keylen)
{
    s_client *c = q->cursor;
    if (!c) return NULL;
    do {
        if (c->keylen == keylen && memcmp(c->key, key, keylen) == 0) return c;
        c = c->next;
    } while (c != q->cursor);
    return NULL;
}

/* Takes client c (the cursor) out of the ring, frees it and moves the cursor on. */
static void s_unlink_cursor(titan_fairq *q)
{
    s_client *c = q->cursor;
    if (c->next == c) {
        q->cursor = NULL;
    } else {
        s_client *prev = c;
        while (prev->next != c) prev = prev->next;
        prev->next = c->next;
        q->cursor = c->next;
    }
    free(c);
}

int titan_fairq_push(titan_fairq *q, const void *key, size_t keylen, void *item)
{
    if (!q || !key || keylen == 0 || keylen > TITAN_FAIRQ_MAX_KEY || !item) return -EINVAL;
    s_node *node = malloc(sizeof(*node));
    if (!node) return -ENOMEM;
    node->item = item;
    node->next = NULL;
    s_client *c = s_find(q, key, keylen);
    if (!c) {
        c = calloc(1, sizeof(*c));
        if (!c) {
            free(node);
            return -ENOMEM;
        }
        memcpy(c->key, key, keylen);
        c->keylen = keylen;
        if (!q->cursor) {
            c->next = c;
            q->cursor = c;
        } else {
            /* a newcomer joins just before the cursor: served after everyone waiting now */
            s_client *last = q->cursor;
            while (last->next != q->cursor) last = last->next;
            last->next = c;
            c->next = q->cursor;
        }
        q->clients++;
    }
    if (c->tail)
        c->tail->next = node;
    else
        c->head = node;
    c->tail = node;
    c->n++;
    q->len++;
    return 0;
}

void *titan_fairq_pop(titan_fairq *q)
{
    if (!q || !q->cursor) return NULL;
    s_client *c = q->cursor;
    s_node *node = c->head;
    void *item = node->item;
    c->head = node->next;
    if (!c->head) c->tail = NULL;
    c->n--;
    q->len--;
    free(node);
    if (c->n == 0) {
        s_unlink_cursor(q);
        q->clients--;
    } else {
        q->cursor = c->next;
    }
    return item;
}

void *titan_fairq_peek(const titan_fairq *q)
{
    return q && q->cursor ? q->cursor->head->item : NULL;
}

size_t titan_fairq_len(const titan_fairq *q)
{
    return q ? q->len : 0;
}

size_t titan_fairq_client_len(const titan_fairq *q, const void *key, size_t keylen)
{
    if (!q || !key) return 0;
    s_client *c = s_find(q, key, keylen);
    return c ? c->n : 0;
}

size_t titan_fairq_clients(const titan_fairq *q)
{
    return q ? q->clients : 0;
}

void titan_fairq_destroy(titan_fairq **qp)
{
    if (!qp || !*qp) return;
    titan_fairq *q = *qp;
    while (q->cursor) {
        s_client *c = q->cursor;
        while (c->head) {
            s_node *n = c->head;
            c->head = n->next;
            free(n);
        }
        s_unlink_cursor(q);
    }
    free(q);
    *qp = NULL;
}
