/* tstore.c - the resident tensor table (see tstore.h). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "request.h"
#include "tstore.h"

#define S_BUCKETS 256

typedef struct s_owner {
    char name[TITAN_OWNER_MAX];
    uint64_t bytes; /* reserved by its tensors, listed or not yet freed */
    int count;
    struct s_owner *next;
} s_owner;

typedef struct s_entry {
    titan_tensor_entry pub; /* first: the public pointer is this object's */
    s_owner *owner;
    int refs;
    bool listed;
    double created, used; /* CLOCK_MONOTONIC seconds */
    struct s_entry *next; /* in its bucket, while listed */
} s_entry;

struct titan_tstore {
    titan_backend *be;
    titan_tstore_quota quota;
    pthread_mutex_t lock;
    s_entry *buckets[S_BUCKETS];
    s_owner *owners;
    uint64_t bytes, count, expired;
    double next_sweep;
};

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static unsigned s_bucket(const char *handle)
{
    unsigned h = 5381;
    for (const char *p = handle; *p; p++)
        h = h * 33 + (unsigned char)*p;
    return h % S_BUCKETS;
}

titan_tstore *titan_tstore_new(titan_backend *be, const titan_tstore_quota *quota)
{
    titan_tstore *ts = calloc(1, sizeof(*ts));
    if (!ts) return NULL;
    if (pthread_mutex_init(&ts->lock, NULL) != 0) {
        free(ts);
        return NULL;
    }
    ts->be = be;
    ts->quota = *quota;
    return ts;
}

const titan_tstore_quota *titan_tstore_get_quota(const titan_tstore *ts)
{
    return &ts->quota;
}

static s_owner *s_owner_find(titan_tstore *ts, const char *name, bool create)
{
    for (s_owner *o = ts->owners; o; o = o->next)
        if (strcmp(o->name, name) == 0) return o;
    if (!create) return NULL;
    s_owner *o = calloc(1, sizeof(*o));
    if (!o) return NULL;
    snprintf(o->name, sizeof(o->name), "%s", name);
    o->next = ts->owners;
    ts->owners = o;
    return o;
}

static void s_owner_drop_if_empty(titan_tstore *ts, s_owner *o)
{
    if (o->count > 0 || o->bytes > 0) return;
    for (s_owner **pp = &ts->owners; *pp; pp = &(*pp)->next) {
        if (*pp == o) {
            *pp = o->next;
            free(o);
            return;
        }
    }
}

/* Gives an entry's memory and quota back (lock held; the entry is unlisted and unreferenced). */
static void s_entry_destroy(titan_tstore *ts, s_entry *e)
{
    ts->be->mem_free(ts->be, e->pub.dev, e->pub.bytes);
    ts->bytes -= e->pub.bytes;
    ts->count--;
    e->owner->bytes -= e->pub.bytes;
    e->owner->count--;
    s_owner_drop_if_empty(ts, e->owner);
    free(e);
}

static void s_unlist(titan_tstore *ts, s_entry *e)
{
    for (s_entry **pp = &ts->buckets[s_bucket(e->pub.handle)]; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    e->listed = false;
    e->next = NULL;
    if (--e->refs == 0) s_entry_destroy(ts, e); /* the table's reference */
}

/* Frees listed tensors idle for longer than the TTL (lock held); runs at most once a second. */
static void s_sweep(titan_tstore *ts, double now)
{
    if (ts->quota.idle_ttl_s <= 0 || now < ts->next_sweep) return;
    ts->next_sweep = now + 1.0;
    for (int b = 0; b < S_BUCKETS; b++) {
        s_entry *e = ts->buckets[b];
        while (e) {
            s_entry *next = e->next;
            if (e->refs == 1 && now - e->used > ts->quota.idle_ttl_s) {
                ts->expired++;
                s_unlist(ts, e);
            }
            e = next;
        }
    }
}

int titan_tstore_create(titan_tstore *ts, const char *owner, titan_dtype dtype, int rank,
                        const int64_t *shape, titan_tensor_entry **out, titan_error *err)
{
    size_t elems;
    if (rank < 1 || rank > TITAN_MAX_RANK || titan_shape_elems(dtype, shape, rank, &elems)) {
        titan_fail(err, "bad_request",
                   "a resident tensor needs 1 to %d dimensions and a size that fits in memory",
                   TITAN_MAX_RANK);
        return -1;
    }
    size_t bytes = elems * titan_dtype_size(dtype);
    s_entry *e = calloc(1, sizeof(*e));
    if (!e) {
        titan_fail(err, "internal", "out of memory");
        return -1;
    }
    unsigned char rnd[12];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        free(e);
        titan_fail(err, "internal", "no randomness for a tensor handle: %s", strerror(errno));
        return -1;
    }
    memcpy(e->pub.handle, "t-", 2);
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(e->pub.handle + 2 + 2 * i, 3, "%02x", rnd[i]);
    e->pub.dtype = dtype;
    e->pub.rank = rank;
    memcpy(e->pub.shape, shape, sizeof(int64_t) * (size_t)rank);
    e->pub.bytes = bytes;
    e->refs = 1;
    e->created = e->used = s_now();

    pthread_mutex_lock(&ts->lock);
    s_sweep(ts, e->created);
    s_owner *o = s_owner_find(ts, owner ? owner : "anonymous", true);
    int rc = -1;
    if (!o) {
        titan_fail(err, "internal", "out of memory");
    } else if (o->count >= ts->quota.client_tensors) {
        titan_fail(err, "quota_exceeded",
                   "this client already holds %d resident tensors, its limit (--max-tensors); free some with "
                   "tensor_free",
                   o->count);
    } else if (bytes > ts->quota.client_bytes || o->bytes > ts->quota.client_bytes - bytes) {
        titan_fail(err, "quota_exceeded",
                   "a %zu-byte tensor would take this client to %" PRIu64
                   " bytes resident, over its quota of %" PRIu64
                   " (--tensor-quota-mb); free some with tensor_free",
                   bytes, o->bytes + bytes, ts->quota.client_bytes);
    } else if (bytes > ts->quota.worker_bytes || ts->bytes > ts->quota.worker_bytes - bytes) {
        titan_fail(err, "quota_exceeded",
                   "a %zu-byte tensor would take this worker to %" PRIu64
                   " bytes resident, over its limit of %" PRIu64
                   " (--tensor-memory-mb); free some with tensor_free, or use another worker",
                   bytes, ts->bytes + bytes, ts->quota.worker_bytes);
    } else {
        /* Reserve first, so that concurrent creations cannot both pass the check. */
        o->bytes += bytes;
        o->count++;
        ts->bytes += bytes;
        ts->count++;
        e->owner = o;
        rc = 0;
    }
    if (rc) {
        if (o) s_owner_drop_if_empty(ts, o);
        pthread_mutex_unlock(&ts->lock);
        free(e);
        return -1;
    }
    pthread_mutex_unlock(&ts->lock);
    /* The allocation may take a while (a device allocation): outside the lock. */
    if (ts->be->mem_alloc(ts->be, bytes, &e->pub.dev, err) != 0) {
        pthread_mutex_lock(&ts->lock);
        ts->bytes -= bytes;
        ts->count--;
        o->bytes -= bytes;
        o->count--;
        s_owner_drop_if_empty(ts, o);
        pthread_mutex_unlock(&ts->lock);
        free(e);
        return -1;
    }
    *out = &e->pub;
    return 0;
}

void titan_tstore_commit(titan_tstore *ts, titan_tensor_entry *pub)
{
    s_entry *e = (s_entry *)pub;
    pthread_mutex_lock(&ts->lock);
    e->listed = true;
    e->refs++; /* the table's reference */
    e->used = s_now();
    unsigned b = s_bucket(e->pub.handle);
    e->next = ts->buckets[b];
    ts->buckets[b] = e;
    pthread_mutex_unlock(&ts->lock);
}

/* Finds a listed entry and checks its owner (lock held). */
static s_entry *s_lookup(titan_tstore *ts, const char *owner, const char *handle, titan_error *err)
{
    for (s_entry *e = ts->buckets[s_bucket(handle)]; e; e = e->next) {
        if (strcmp(e->pub.handle, handle) != 0) continue;
        if (strcmp(e->owner->name, owner ? owner : "anonymous") != 0) {
            titan_fail(err, "unauthorized",
                       "tensor '%s' belongs to another client: handles are private to the client "
                       "(its connection identity or CURVE key) that made them",
                       handle);
            return NULL;
        }
        return e;
    }
    titan_fail(
        err, "not_found",
        "no resident tensor '%s' here: it was freed, expired, never existed, or the worker restarted (see "
        "tensor_list)",
        handle);
    return NULL;
}

int titan_tstore_acquire(titan_tstore *ts, const char *owner, const char *handle, titan_tensor_entry **out,
                         titan_error *err)
{
    pthread_mutex_lock(&ts->lock);
    s_entry *e = s_lookup(ts, owner, handle, err);
    if (e) {
        e->refs++;
        e->used = s_now();
        *out = &e->pub;
    }
    pthread_mutex_unlock(&ts->lock);
    return e ? 0 : -1;
}

void titan_tstore_release(titan_tstore *ts, titan_tensor_entry *pub)
{
    if (!pub) return;
    s_entry *e = (s_entry *)pub;
    pthread_mutex_lock(&ts->lock);
    if (--e->refs == 0) s_entry_destroy(ts, e);
    pthread_mutex_unlock(&ts->lock);
}

int titan_tstore_free(titan_tstore *ts, const char *owner, const char *handle, size_t *bytes,
                      titan_error *err)
{
    pthread_mutex_lock(&ts->lock);
    s_entry *e = s_lookup(ts, owner, handle, err);
    if (e) {
        *bytes = e->pub.bytes;
        s_unlist(ts, e);
    }
    pthread_mutex_unlock(&ts->lock);
    return e ? 0 : -1;
}

int titan_tstore_free_all(titan_tstore *ts, const char *owner)
{
    const char *name = owner ? owner : "anonymous";
    int n = 0;
    pthread_mutex_lock(&ts->lock);
    for (int b = 0; b < S_BUCKETS; b++) {
        s_entry *e = ts->buckets[b];
        while (e) {
            s_entry *next = e->next;
            if (strcmp(e->owner->name, name) == 0) {
                s_unlist(ts, e);
                n++;
            }
            e = next;
        }
    }
    pthread_mutex_unlock(&ts->lock);
    return n;
}

json_t *titan_tstore_list(titan_tstore *ts, const char *owner)
{
    const char *name = owner ? owner : "anonymous";
    json_t *list = json_array();
    if (!list) return NULL;
    double now = s_now();
    pthread_mutex_lock(&ts->lock);
    s_sweep(ts, now);
    uint64_t bytes = 0, count = 0;
    for (int b = 0; b < S_BUCKETS; b++) {
        for (s_entry *e = ts->buckets[b]; e; e = e->next) {
            if (strcmp(e->owner->name, name) != 0) continue;
            json_t *shape = json_array();
            for (int i = 0; i < e->pub.rank; i++)
                json_array_append_new(shape, json_integer(e->pub.shape[i]));
            json_array_append_new(list, json_pack("{s:s, s:s, s:o, s:I, s:f, s:f}", "ref", e->pub.handle,
                                                  "dtype", titan_dtype_name(e->pub.dtype), "shape", shape,
                                                  "bytes", (json_int_t)e->pub.bytes, "age_s",
                                                  now - e->created, "idle_s", now - e->used));
            bytes += e->pub.bytes;
            count++;
        }
    }
    json_t *o = json_pack("{s:o, s:I, s:I, s:{s:I, s:i, s:I, s:f}, s:I}", "tensors", list, "bytes",
                          (json_int_t)bytes, "count", (json_int_t)count, "quota", "client_bytes",
                          (json_int_t)ts->quota.client_bytes, "client_tensors", ts->quota.client_tensors,
                          "worker_bytes", (json_int_t)ts->quota.worker_bytes, "idle_ttl_s",
                          ts->quota.idle_ttl_s, "worker_bytes", (json_int_t)ts->bytes);
    pthread_mutex_unlock(&ts->lock);
    return o;
}

void titan_tstore_usage(titan_tstore *ts, uint64_t *bytes, uint64_t *count, uint64_t *clients,
                        uint64_t *expired)
{
    pthread_mutex_lock(&ts->lock);
    uint64_t n = 0;
    for (s_owner *o = ts->owners; o; o = o->next)
        n++;
    if (bytes) *bytes = ts->bytes;
    if (count) *count = ts->count;
    if (clients) *clients = n;
    if (expired) *expired = ts->expired;
    pthread_mutex_unlock(&ts->lock);
}

void titan_tstore_destroy(titan_tstore **p)
{
    if (!p || !*p) return;
    titan_tstore *ts = *p;
    for (int b = 0; b < S_BUCKETS; b++) {
        s_entry *e = ts->buckets[b];
        while (e) {
            s_entry *next = e->next;
            ts->be->mem_free(ts->be, e->pub.dev, e->pub.bytes);
            free(e);
            e = next;
        }
    }
    while (ts->owners) {
        s_owner *o = ts->owners;
        ts->owners = o->next;
        free(o);
    }
    pthread_mutex_destroy(&ts->lock);
    free(ts);
    *p = NULL;
}
