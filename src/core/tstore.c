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

#include "clock.h"
#include "request.h"
#include "tstore.h"

#define S_CONN_NONE (-1)     /* no open connection known */
#define S_CONN_PINNED (-2)   /* messages without a descriptor (inproc): never orphaned */
#define S_MAX_CONN (1 << 20) /* descriptors tracked; a larger one pins its client */

typedef struct s_entry s_entry;
typedef struct s_owner s_owner;

struct s_entry {
    titan_tensor_entry pub; /* first: the public pointer is this object's */
    s_owner *owner;
    int refs;
    bool listed;
    uint64_t charge;        /* titan_tstore_charge(pub.bytes) */
    double created, used;   /* the store's clock */
    s_entry *hnext;         /* in its handle bucket, while listed */
    s_entry *oprev, *onext; /* in its owner's list, while listed */
    s_entry *lprev, *lnext; /* in the list of all listed tensors by last use, oldest first */
    s_entry *dnext;         /* in a list of entries to free outside the lock */
};

struct s_owner {
    uint64_t bytes, charged; /* reserved by its tensors, listed or not yet freed */
    int count;
    s_entry *tensors; /* its listed tensors, newest first */
    int conn;         /* the connection that last carried its messages, or S_CONN_* */
    bool orphaned;
    bool clearing; /* its tensors are being unlisted: keep the record meanwhile */
    double orphaned_at;
    s_owner *hnext;         /* in its name bucket */
    s_owner *gprev, *gnext; /* in the orphans, oldest first */
    char name[];
};

struct titan_tstore {
    titan_backend *be;
    titan_tstore_quota quota;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    double (*clock)(void *);
    void *clock_arg;
    s_entry **handles; /* listed tensors by handle; hmask + 1 buckets */
    size_t hmask, nlisted;
    s_owner **owners; /* owner records by name; omask + 1 buckets */
    size_t omask, nowners;
    s_entry *lru_head, *lru_tail;
    s_owner *orph_head, *orph_tail;
    char **conns; /* descriptor -> the owner last seen on it (owned copies) */
    size_t nconns;
    bool tracking; /* the server reports connections: a client without an open one is an orphan */
    uint64_t bytes, charged, count, holders, expired, reclaimed, orphans;
    pthread_t sweeper;
    bool sweeper_started, stopping;
};

/* The store's clock unless a test sets its own (titan_tstore_set_clock). */
static double s_monotonic(void *arg)
{
    (void)arg;
    return titan_clock_mono_s();
}

/* Now by the store's clock. */
static double s_clock(titan_tstore *ts)
{
    return ts->clock(ts->clock_arg);
}

static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h ^ (h >> 29);
}

uint64_t titan_tstore_charge(size_t bytes)
{
    uint64_t b = bytes ? (uint64_t)bytes : 1;
    if (b > UINT64_MAX - TITAN_TSTORE_ALIGN - TITAN_TSTORE_TENSOR_OVERHEAD) return UINT64_MAX;
    return (b + TITAN_TSTORE_ALIGN - 1) / TITAN_TSTORE_ALIGN * TITAN_TSTORE_ALIGN +
           TITAN_TSTORE_TENSOR_OVERHEAD;
}

/* A tensor's charge on this store's backend: at least what the device really holds for it (the CUDA pool
 * rounds an allocation up to its block size, up to 12.5% more) plus the bookkeeping. */
static uint64_t s_charge(const titan_tstore *ts, size_t bytes)
{
    uint64_t c = titan_tstore_charge(bytes);
    if (!ts->be || !ts->be->mem_footprint || c == UINT64_MAX) return c;
    uint64_t held = ts->be->mem_footprint(ts->be, bytes ? bytes : 1);
    if (held > UINT64_MAX - TITAN_TSTORE_TENSOR_OVERHEAD) return UINT64_MAX;
    return held + TITAN_TSTORE_TENSOR_OVERHEAD > c ? held + TITAN_TSTORE_TENSOR_OVERHEAD : c;
}

titan_tstore *titan_tstore_new(titan_backend *be, const titan_tstore_quota *quota)
{
    titan_tstore *ts = calloc(1, sizeof(*ts));
    if (!ts) return NULL;
    ts->hmask = 255;
    ts->omask = 63;
    ts->handles = calloc(ts->hmask + 1, sizeof(*ts->handles));
    ts->owners = calloc(ts->omask + 1, sizeof(*ts->owners));
    if (!ts->handles || !ts->owners) goto fail;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0) goto fail;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&ts->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0) goto fail;
    if (pthread_mutex_init(&ts->lock, NULL) != 0) {
        pthread_cond_destroy(&ts->wake);
        goto fail;
    }
    ts->be = be;
    ts->quota = *quota;
    ts->clock = s_monotonic;
    return ts;
fail:
    free(ts->handles);
    free(ts->owners);
    free(ts);
    return NULL;
}

void titan_tstore_set_clock(titan_tstore *ts, double (*now)(void *arg), void *arg)
{
    ts->clock = now ? now : s_monotonic;
    ts->clock_arg = arg;
}

const titan_tstore_quota *titan_tstore_get_quota(const titan_tstore *ts)
{
    return &ts->quota;
}

/* --- the tables (lock held) --- */

/* Doubles the handle table when it holds more than two tensors a bucket; a failed growth only slows. */
static void s_handles_grow(titan_tstore *ts)
{
    if (ts->nlisted <= 2 * (ts->hmask + 1) || ts->hmask >= (SIZE_MAX >> 2)) return;
    size_t n = 2 * (ts->hmask + 1);
    s_entry **nb = calloc(n, sizeof(*nb));
    if (!nb) return;
    for (size_t b = 0; b <= ts->hmask; b++) {
        for (s_entry *e = ts->handles[b], *next; e; e = next) {
            next = e->hnext;
            size_t i = s_hash(e->pub.handle) & (n - 1);
            e->hnext = nb[i];
            nb[i] = e;
        }
    }
    free(ts->handles);
    ts->handles = nb;
    ts->hmask = n - 1;
}

static void s_owners_grow(titan_tstore *ts)
{
    if (ts->nowners <= 2 * (ts->omask + 1) || ts->omask >= (SIZE_MAX >> 2)) return;
    size_t n = 2 * (ts->omask + 1);
    s_owner **nb = calloc(n, sizeof(*nb));
    if (!nb) return;
    for (size_t b = 0; b <= ts->omask; b++) {
        for (s_owner *o = ts->owners[b], *next; o; o = next) {
            next = o->hnext;
            size_t i = s_hash(o->name) & (n - 1);
            o->hnext = nb[i];
            nb[i] = o;
        }
    }
    free(ts->owners);
    ts->owners = nb;
    ts->omask = n - 1;
}

static s_owner *s_owner_find(titan_tstore *ts, const char *name, bool create)
{
    size_t b = s_hash(name) & ts->omask;
    for (s_owner *o = ts->owners[b]; o; o = o->hnext)
        if (strcmp(o->name, name) == 0) return o;
    if (!create) return NULL;
    size_t len = strnlen(name, TITAN_OWNER_MAX - 1);
    s_owner *o = calloc(1, sizeof(*o) + len + 1);
    if (!o) return NULL;
    memcpy(o->name, name, len);
    o->conn = S_CONN_NONE;
    o->hnext = ts->owners[b];
    ts->owners[b] = o;
    ts->nowners++;
    s_owners_grow(ts);
    return o;
}

static void s_orphan_unlink(titan_tstore *ts, s_owner *o)
{
    if (!o->orphaned) return;
    if (o->gprev)
        o->gprev->gnext = o->gnext;
    else
        ts->orph_head = o->gnext;
    if (o->gnext)
        o->gnext->gprev = o->gprev;
    else
        ts->orph_tail = o->gprev;
    o->gprev = o->gnext = NULL;
    o->orphaned = false;
    ts->orphans--;
}

/* Starts o's grace period: its tensors go at now + orphan_ttl_s unless it is seen again. */
static void s_orphan(titan_tstore *ts, s_owner *o, double now)
{
    if (o->orphaned || ts->quota.orphan_ttl_s <= 0) return;
    o->orphaned = true;
    o->orphaned_at = now;
    o->gnext = NULL;
    o->gprev = ts->orph_tail;
    if (ts->orph_tail)
        ts->orph_tail->gnext = o;
    else
        ts->orph_head = o;
    ts->orph_tail = o;
    ts->orphans++;
}

/* Forgets an owner record that holds nothing and has no open connection to wait for. */
static void s_owner_drop_if_idle(titan_tstore *ts, s_owner *o)
{
    if (o->count > 0 || o->bytes > 0 || o->conn != S_CONN_NONE || o->clearing) return;
    s_orphan_unlink(ts, o);
    for (s_owner **pp = &ts->owners[s_hash(o->name) & ts->omask]; *pp; pp = &(*pp)->hnext) {
        if (*pp == o) {
            *pp = o->hnext;
            break;
        }
    }
    ts->nowners--;
    free(o);
}

static void s_lru_unlink(titan_tstore *ts, s_entry *e)
{
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else
        ts->lru_head = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    else
        ts->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void s_lru_append(titan_tstore *ts, s_entry *e)
{
    e->lnext = NULL;
    e->lprev = ts->lru_tail;
    if (ts->lru_tail)
        ts->lru_tail->lnext = e;
    else
        ts->lru_head = e;
    ts->lru_tail = e;
}

/* Gives an entry's quota back (lock held; unlisted and unreferenced); its memory goes on *dead, to be
 * freed outside the lock (a large free can take milliseconds, and the I/O thread takes this lock). */
static void s_entry_retire(titan_tstore *ts, s_entry *e, s_entry **dead)
{
    s_owner *o = e->owner;
    ts->bytes -= e->pub.bytes;
    ts->charged -= e->charge;
    ts->count--;
    o->bytes -= e->pub.bytes;
    o->charged -= e->charge;
    if (--o->count == 0) ts->holders--;
    s_owner_drop_if_idle(ts, o);
    e->owner = NULL;
    e->dnext = *dead;
    *dead = e;
}

static void s_bury(titan_tstore *ts, s_entry *dead)
{
    while (dead) {
        s_entry *next = dead->dnext;
        ts->be->mem_free(ts->be, dead->pub.dev, dead->pub.bytes);
        free(dead);
        dead = next;
    }
}

static void s_unlist(titan_tstore *ts, s_entry *e, s_entry **dead)
{
    for (s_entry **pp = &ts->handles[s_hash(e->pub.handle) & ts->hmask]; *pp; pp = &(*pp)->hnext) {
        if (*pp == e) {
            *pp = e->hnext;
            break;
        }
    }
    e->hnext = NULL;
    s_owner *o = e->owner;
    if (e->oprev)
        e->oprev->onext = e->onext;
    else
        o->tensors = e->onext;
    if (e->onext) e->onext->oprev = e->oprev;
    e->oprev = e->onext = NULL;
    s_lru_unlink(ts, e);
    e->listed = false;
    ts->nlisted--;
    if (--e->refs == 0) s_entry_retire(ts, e, dead); /* the table's reference */
}

/* Frees what is due at `now` (lock held): tensors idle past the TTL, oldest first, and the tensors of
 * orphans past their grace period. Visits only what it frees (and tensors still in use). */
static int s_sweep(titan_tstore *ts, double now, s_entry **dead)
{
    int n = 0;
    if (ts->quota.idle_ttl_s > 0) {
        s_entry *busy_head = NULL, *busy_tail = NULL;
        while (ts->lru_head && now - ts->lru_head->used > ts->quota.idle_ttl_s) {
            s_entry *e = ts->lru_head;
            if (e->refs > 1) {
                /* A request holds it: it is in use. Set aside; its release puts it back as used. */
                s_lru_unlink(ts, e);
                e->lprev = busy_tail;
                if (busy_tail)
                    busy_tail->lnext = e;
                else
                    busy_head = e;
                busy_tail = e;
                continue;
            }
            ts->expired++;
            n++;
            s_unlist(ts, e, dead);
        }
        for (s_entry *e = busy_head, *next; e; e = next) {
            next = e->lnext;
            s_lru_append(ts, e);
        }
    }
    while (ts->orph_head && now - ts->orph_head->orphaned_at >= ts->quota.orphan_ttl_s) {
        s_owner *o = ts->orph_head;
        s_orphan_unlink(ts, o);
        o->clearing = true;
        while (o->tensors) {
            ts->reclaimed++;
            n++;
            s_unlist(ts, o->tensors, dead);
        }
        o->clearing = false;
        s_owner_drop_if_idle(ts, o);
    }
    return n;
}

int titan_tstore_sweep(titan_tstore *ts)
{
    s_entry *dead = NULL;
    pthread_mutex_lock(&ts->lock);
    int n = s_sweep(ts, s_clock(ts), &dead);
    pthread_mutex_unlock(&ts->lock);
    s_bury(ts, dead);
    return n;
}

/* When the next tensor falls due (lock held; after a sweep, so later than now), or 0 for none. */
static double s_next_due(titan_tstore *ts)
{
    double due = 0;
    if (ts->quota.idle_ttl_s > 0 && ts->lru_head) due = ts->lru_head->used + ts->quota.idle_ttl_s;
    if (ts->orph_head) {
        double d = ts->orph_head->orphaned_at + ts->quota.orphan_ttl_s;
        if (due == 0 || d < due) due = d;
    }
    return due;
}

static void *s_sweeper_main(void *arg)
{
    titan_tstore *ts = arg;
    pthread_mutex_lock(&ts->lock);
    while (!ts->stopping) {
        s_entry *dead = NULL;
        double now = s_clock(ts);
        s_sweep(ts, now, &dead);
        if (dead) {
            pthread_mutex_unlock(&ts->lock);
            s_bury(ts, dead);
            pthread_mutex_lock(&ts->lock);
            continue;
        }
        /* Wake when the next one is due, and at least once a second (the clock of a test may jump). */
        double due = s_next_due(ts), wait = due > now && due - now < 1.0 ? due - now + 0.001 : 1.0;
        struct timespec t = titan_clock_mono_in((int64_t)(wait * 1e9));
        pthread_cond_timedwait(&ts->wake, &ts->lock, &t);
    }
    pthread_mutex_unlock(&ts->lock);
    return NULL;
}

int titan_tstore_start_sweeper(titan_tstore *ts)
{
    if (ts->sweeper_started) return 0;
    int rc = pthread_create(&ts->sweeper, NULL, s_sweeper_main, ts);
    if (rc != 0) return -rc;
    ts->sweeper_started = true;
    return 0;
}

/* --- tensors --- */

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
    uint64_t charge = s_charge(ts, bytes);
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
    e->charge = charge;
    e->refs = 1;

    s_entry *dead = NULL;
    pthread_mutex_lock(&ts->lock);
    e->created = e->used = s_clock(ts);
    s_sweep(ts, e->created, &dead); /* what is due goes before the quotas are checked */
    s_owner *o = s_owner_find(ts, owner ? owner : "anonymous", true);
    int rc = -1;
    if (!o) {
        titan_fail(err, "internal", "out of memory");
    } else if (o->count >= ts->quota.client_tensors) {
        titan_fail(err, "quota_exceeded",
                   "this client already holds %d resident tensors, its limit (--max-tensors); free some with "
                   "tensor_free",
                   o->count);
    } else if (ts->count >= ts->quota.worker_tensors) {
        titan_fail(err, "quota_exceeded",
                   "this worker already holds %" PRIu64 " resident tensors of all clients, its limit "
                   "(--max-worker-tensors); free some with tensor_free, or use another worker",
                   ts->count);
    } else if (charge > ts->quota.client_bytes || o->charged > ts->quota.client_bytes - charge) {
        titan_fail(err, "quota_exceeded",
                   "a %zu-byte tensor (charged %" PRIu64 " bytes: its data rounded up to what the device allocates (at least %d), plus %d for its "
                   "bookkeeping) would take this client to %" PRIu64
                   " bytes resident, over its quota of %" PRIu64
                   " (--tensor-quota-mb); free some with tensor_free",
                   bytes, charge, TITAN_TSTORE_ALIGN, TITAN_TSTORE_TENSOR_OVERHEAD, o->charged + charge,
                   ts->quota.client_bytes);
    } else if (charge > ts->quota.worker_bytes || ts->charged > ts->quota.worker_bytes - charge) {
        titan_fail(err, "quota_exceeded",
                   "a %zu-byte tensor (charged %" PRIu64 " bytes: its data rounded up to what the device allocates (at least %d), plus %d for its "
                   "bookkeeping) would take this worker to %" PRIu64
                   " bytes resident, over its limit of %" PRIu64
                   " (--tensor-memory-mb); free some with tensor_free, or use another worker",
                   bytes, charge, TITAN_TSTORE_ALIGN, TITAN_TSTORE_TENSOR_OVERHEAD, ts->charged + charge,
                   ts->quota.worker_bytes);
    } else {
        /* Reserve first, so that concurrent creations cannot both pass the check. */
        o->bytes += bytes;
        o->charged += charge;
        if (o->count++ == 0) ts->holders++;
        ts->bytes += bytes;
        ts->charged += charge;
        ts->count++;
        e->owner = o;
        rc = 0;
    }
    if (rc) {
        if (o) s_owner_drop_if_idle(ts, o);
        pthread_mutex_unlock(&ts->lock);
        s_bury(ts, dead);
        free(e);
        return -1;
    }
    pthread_mutex_unlock(&ts->lock);
    s_bury(ts, dead);
    /* The allocation may take a while (a device allocation): outside the lock. */
    if (ts->be->mem_alloc(ts->be, bytes, &e->pub.dev, err) != 0) {
        s_entry *none = NULL; /* it has no memory to free: only the entry goes */
        pthread_mutex_lock(&ts->lock);
        s_entry_retire(ts, e, &none);
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
    e->used = s_clock(ts);
    size_t b = s_hash(e->pub.handle) & ts->hmask;
    e->hnext = ts->handles[b];
    ts->handles[b] = e;
    ts->nlisted++;
    s_owner *o = e->owner;
    e->oprev = NULL;
    e->onext = o->tensors;
    if (o->tensors) o->tensors->oprev = e;
    o->tensors = e;
    s_lru_append(ts, e);
    /* Made for a client whose connection has closed meanwhile: it is an orphan's from the start. */
    if (ts->tracking && o->conn == S_CONN_NONE) s_orphan(ts, o, e->used);
    s_handles_grow(ts);
    pthread_mutex_unlock(&ts->lock);
}

/* Finds a listed entry and checks its owner (lock held). */
static s_entry *s_lookup(titan_tstore *ts, const char *owner, const char *handle, titan_error *err)
{
    for (s_entry *e = ts->handles[s_hash(handle) & ts->hmask]; e; e = e->hnext) {
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

/* Marks a listed entry as used now: last in the idle order. */
static void s_touch(titan_tstore *ts, s_entry *e)
{
    e->used = s_clock(ts);
    s_lru_unlink(ts, e);
    s_lru_append(ts, e);
}

int titan_tstore_acquire(titan_tstore *ts, const char *owner, const char *handle, titan_tensor_entry **out,
                         titan_error *err)
{
    pthread_mutex_lock(&ts->lock);
    s_entry *e = s_lookup(ts, owner, handle, err);
    if (e) {
        e->refs++;
        s_touch(ts, e);
        *out = &e->pub;
    }
    pthread_mutex_unlock(&ts->lock);
    return e ? 0 : -1;
}

void titan_tstore_release(titan_tstore *ts, titan_tensor_entry *pub)
{
    if (!pub) return;
    s_entry *e = (s_entry *)pub, *dead = NULL;
    pthread_mutex_lock(&ts->lock);
    if (e->listed) s_touch(ts, e); /* the request that used it ends now */
    if (--e->refs == 0) s_entry_retire(ts, e, &dead);
    pthread_mutex_unlock(&ts->lock);
    s_bury(ts, dead);
}

int titan_tstore_free(titan_tstore *ts, const char *owner, const char *handle, size_t *bytes,
                      titan_error *err)
{
    s_entry *dead = NULL;
    pthread_mutex_lock(&ts->lock);
    s_entry *e = s_lookup(ts, owner, handle, err);
    if (e) {
        *bytes = e->pub.bytes;
        s_unlist(ts, e, &dead);
    }
    pthread_mutex_unlock(&ts->lock);
    s_bury(ts, dead);
    return e ? 0 : -1;
}

int titan_tstore_free_all(titan_tstore *ts, const char *owner)
{
    int n = 0;
    s_entry *dead = NULL;
    pthread_mutex_lock(&ts->lock);
    s_owner *o = s_owner_find(ts, owner ? owner : "anonymous", false);
    if (o) {
        o->clearing = true;
        while (o->tensors) {
            s_unlist(ts, o->tensors, &dead);
            n++;
        }
        o->clearing = false;
        s_owner_drop_if_idle(ts, o);
    }
    pthread_mutex_unlock(&ts->lock);
    s_bury(ts, dead);
    return n;
}

json_t *titan_tstore_list(titan_tstore *ts, const char *owner)
{
    json_t *list = json_array();
    if (!list) return NULL;
    pthread_mutex_lock(&ts->lock);
    double now = s_clock(ts);
    uint64_t bytes = 0, charged = 0, count = 0;
    s_owner *o = s_owner_find(ts, owner ? owner : "anonymous", false);
    for (s_entry *e = o ? o->tensors : NULL; e; e = e->onext) {
        json_t *shape = json_array();
        for (int i = 0; i < e->pub.rank; i++)
            json_array_append_new(shape, json_integer(e->pub.shape[i]));
        json_array_append_new(list, json_pack("{s:s, s:s, s:o, s:I, s:f, s:f}", "ref", e->pub.handle, "dtype",
                                              titan_dtype_name(e->pub.dtype), "shape", shape, "bytes",
                                              (json_int_t)e->pub.bytes, "age_s", now - e->created, "idle_s",
                                              now - e->used));
        bytes += e->pub.bytes;
        charged += e->charge;
        count++;
    }
    json_t *r = json_pack("{s:o, s:I, s:I, s:I, s:{s:I, s:i, s:I, s:f}, s:I, s:I}", "tensors", list, "bytes",
                          (json_int_t)bytes, "charged_bytes", (json_int_t)charged, "count", (json_int_t)count,
                          "quota", "client_bytes", (json_int_t)ts->quota.client_bytes, "client_tensors",
                          ts->quota.client_tensors, "worker_bytes", (json_int_t)ts->quota.worker_bytes,
                          "idle_ttl_s", ts->quota.idle_ttl_s, "worker_bytes", (json_int_t)ts->bytes,
                          "worker_charged_bytes", (json_int_t)ts->charged);
    pthread_mutex_unlock(&ts->lock);
    return r;
}

void titan_tstore_get_stats(titan_tstore *ts, titan_tstore_stats *out)
{
    pthread_mutex_lock(&ts->lock);
    out->bytes = ts->bytes;
    out->charged = ts->charged;
    out->count = ts->count;
    out->clients = ts->holders;
    out->expired = ts->expired;
    out->orphans = ts->orphans;
    out->reclaimed = ts->reclaimed;
    pthread_mutex_unlock(&ts->lock);
}

void titan_tstore_usage(titan_tstore *ts, uint64_t *bytes, uint64_t *count, uint64_t *clients,
                        uint64_t *expired)
{
    titan_tstore_stats st;
    titan_tstore_get_stats(ts, &st);
    if (bytes) *bytes = st.bytes;
    if (count) *count = st.count;
    if (clients) *clients = st.clients;
    if (expired) *expired = st.expired;
}

/* --- connections --- */

/* Connection `conn`, which carried `name`'s messages, has gone (lock held). */
static void s_conn_gone(titan_tstore *ts, int conn, const char *name, double now)
{
    s_owner *o = s_owner_find(ts, name, false);
    if (!o || o->conn != conn) return; /* it has moved to a newer connection (or never had one here) */
    o->conn = S_CONN_NONE;
    if (o->count > 0) s_orphan(ts, o, now);
    s_owner_drop_if_idle(ts, o);
}

void titan_tstore_conn_seen(titan_tstore *ts, int conn, const char *owner)
{
    if (!owner) owner = "anonymous";
    pthread_mutex_lock(&ts->lock);
    ts->tracking = true;
    double now = s_clock(ts);
    if (conn >= 0 && conn < S_MAX_CONN && (size_t)conn >= ts->nconns) {
        size_t n = ts->nconns ? ts->nconns : 64;
        while (n <= (size_t)conn)
            n *= 2;
        char **nc = realloc(ts->conns, n * sizeof(*nc));
        if (nc) {
            memset(nc + ts->nconns, 0, (n - ts->nconns) * sizeof(*nc));
            ts->conns = nc;
            ts->nconns = n;
        }
    }
    bool tracked = conn >= 0 && (size_t)conn < ts->nconns;
    if (tracked && (!ts->conns[conn] || strcmp(ts->conns[conn], owner) != 0)) {
        /* A descriptor that carried another client: that connection closed unseen. */
        if (ts->conns[conn]) s_conn_gone(ts, conn, ts->conns[conn], now);
        free(ts->conns[conn]);
        ts->conns[conn] = strdup(owner);
        tracked = ts->conns[conn] != NULL;
    }
    /* Every open connection has a record, so that a tensor made for a client without one is seen as an
     * orphan's (its connection closed while the request waited). */
    s_owner *o = s_owner_find(ts, owner, true);
    if (o) {
        o->conn = tracked ? conn : S_CONN_PINNED;
        s_orphan_unlink(ts, o);
    }
    pthread_mutex_unlock(&ts->lock);
}

void titan_tstore_conn_closed(titan_tstore *ts, int conn)
{
    pthread_mutex_lock(&ts->lock);
    if (conn >= 0 && (size_t)conn < ts->nconns && ts->conns[conn]) {
        char *name = ts->conns[conn];
        ts->conns[conn] = NULL;
        s_conn_gone(ts, conn, name, s_clock(ts));
        free(name);
    }
    pthread_mutex_unlock(&ts->lock);
}

void titan_tstore_destroy(titan_tstore **p)
{
    if (!p || !*p) return;
    titan_tstore *ts = *p;
    if (ts->sweeper_started) {
        pthread_mutex_lock(&ts->lock);
        ts->stopping = true;
        pthread_cond_signal(&ts->wake);
        pthread_mutex_unlock(&ts->lock);
        pthread_join(ts->sweeper, NULL);
    }
    for (size_t b = 0; ts->handles && b <= ts->hmask; b++) {
        for (s_entry *e = ts->handles[b], *next; e; e = next) {
            next = e->hnext;
            ts->be->mem_free(ts->be, e->pub.dev, e->pub.bytes);
            free(e);
        }
    }
    for (size_t b = 0; ts->owners && b <= ts->omask; b++) {
        for (s_owner *o = ts->owners[b], *next; o; o = next) {
            next = o->hnext;
            free(o);
        }
    }
    for (size_t i = 0; i < ts->nconns; i++)
        free(ts->conns[i]);
    free(ts->conns);
    free(ts->handles);
    free(ts->owners);
    pthread_cond_destroy(&ts->wake);
    pthread_mutex_destroy(&ts->lock);
    free(ts);
    *p = NULL;
}
