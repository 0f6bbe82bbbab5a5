/* tstore.h - resident tensors: data kept in the backend's memory between requests, named by handles
 * that belong to the client that made them, under a per-client and a per-worker memory quota. */
#ifndef TITAN_WORKER_TSTORE_H
#define TITAN_WORKER_TSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "backend.h"

#define TITAN_HANDLE_MAX 32 /* "t-" and 24 hex digits, NUL included */
#define TITAN_OWNER_MAX 520 /* "id:" and a 255-byte routing id in hex */
/* What one tensor costs the quotas beyond its data, which is rounded up to TITAN_TSTORE_ALIGN: its
 * bookkeeping (the entry, its handle, its places in the tables) and the allocator's headers. Measured at
 * about 420 bytes of RSS per tensor on the CPU backend (40,000 one-element tensors). */
#define TITAN_TSTORE_TENSOR_OVERHEAD 512
#define TITAN_TSTORE_ALIGN 64
#define TITAN_TSTORE_DEFAULT_ORPHAN_TTL 600 /* seconds */
#define TITAN_TSTORE_DEFAULT_WORKER_TENSORS 65536

typedef struct {
    char handle[TITAN_HANDLE_MAX];
    titan_dtype dtype;
    int rank;
    int64_t shape[TITAN_MAX_RANK];
    size_t bytes;
    void *dev; /* the backend's memory (mem_alloc) */
} titan_tensor_entry;

typedef struct {
    uint64_t worker_bytes;   /* all resident tensors together, charged (0: none allowed) */
    uint64_t client_bytes;   /* one client's, charged (0: none allowed) */
    int client_tensors;      /* how many one client may hold */
    double idle_ttl_s;       /* a tensor no request used for this long is freed (0: kept until freed) */
    uint64_t worker_tensors; /* how many all clients together may hold */
    double orphan_ttl_s;     /* the tensors of a client whose connection closed are freed this long after,
                              * unless it comes back (0: kept until freed) */
} titan_tstore_quota;

typedef struct {
    uint64_t bytes;     /* data bytes of the tensors held now (listed, or unlisted but still in use) */
    uint64_t charged;   /* what they cost the quotas: titan_tstore_charge of each */
    uint64_t count;     /* tensors held now */
    uint64_t clients;   /* clients holding any */
    uint64_t expired;   /* tensors freed by idle_ttl_s since the start */
    uint64_t orphans;   /* clients whose connection closed, holding tensors, waiting for orphan_ttl_s */
    uint64_t reclaimed; /* tensors of orphans freed by orphan_ttl_s since the start */
} titan_tstore_stats;

typedef struct titan_tstore titan_tstore;

/* Creates a store over backend `be` (borrowed). Returns NULL when out of memory. */
titan_tstore *titan_tstore_new(titan_backend *be, const titan_tstore_quota *quota);
/* Frees every tensor and the store (stopping its sweeper); takes NULL and sets *p to NULL. No request may
 * be running. */
void titan_tstore_destroy(titan_tstore **p);
/* Starts a thread that frees expired and orphaned tensors when they are due (within a second), so that
 * their memory goes back without waiting for a request. Returns 0 or -errno. */
int titan_tstore_start_sweeper(titan_tstore *ts);

/* What a tensor of `bytes` data bytes costs the quotas: the data rounded up to TITAN_TSTORE_ALIGN, plus
 * TITAN_TSTORE_TENSOR_OVERHEAD. A backend whose allocations hold more (its mem_footprint: the CUDA pool's
 * block sizes) is charged that instead of the rounded data. */
uint64_t titan_tstore_charge(size_t bytes);

/* Reserves quota for a new tensor of `owner` and allocates its memory. The entry is not listed yet:
 * fill its memory, then titan_tstore_commit it, or titan_tstore_release it to give it all back.
 * Returns 0 and *out (one reference, the caller's), or -1 with err: quota_exceeded (with the
 * figures), too_large or device_error (the backend's allocation). */
int titan_tstore_create(titan_tstore *ts, const char *owner, titan_dtype dtype, int rank,
                        const int64_t *shape, titan_tensor_entry **out, titan_error *err);
/* Lists a created entry under its handle. The caller keeps its reference (release it). */
void titan_tstore_commit(titan_tstore *ts, titan_tensor_entry *e);
/* Finds `handle` for `owner` and takes a reference. Returns 0 and *out, or -1 with err: not_found (no
 * such tensor, or it was freed) or unauthorized (another client's). */
int titan_tstore_acquire(titan_tstore *ts, const char *owner, const char *handle, titan_tensor_entry **out,
                         titan_error *err);
/* Drops a reference (counting as a use of the tensor); the memory and the quota go back when the last
 * one goes. Takes NULL. */
void titan_tstore_release(titan_tstore *ts, titan_tensor_entry *e);
/* Unlists `handle` (memory follows when no request uses it). Returns 0 and *bytes, or -1 with err as
 * titan_tstore_acquire. */
int titan_tstore_free(titan_tstore *ts, const char *owner, const char *handle, size_t *bytes,
                      titan_error *err);
/* Drops every tensor of `owner`. Returns how many. */
int titan_tstore_free_all(titan_tstore *ts, const char *owner);
/* {"tensors":[{"ref","dtype","shape","bytes","age_s","idle_s"}...], "bytes", "charged_bytes", "count",
 *  "quota": {...}, "worker_bytes"} for `owner`, from its own tensors only (never a scan of the others');
 * NULL when out of memory. Frees nothing, so that it is cheap on the I/O thread. */
json_t *titan_tstore_list(titan_tstore *ts, const char *owner);
/* The worker's totals: data bytes and tensors resident now, the number of clients holding any, and how
 * many tensors idle_ttl_s has freed since the start. */
void titan_tstore_usage(titan_tstore *ts, uint64_t *bytes, uint64_t *count, uint64_t *clients,
                        uint64_t *expired);
void titan_tstore_get_stats(titan_tstore *ts, titan_tstore_stats *out);
const titan_tstore_quota *titan_tstore_get_quota(const titan_tstore *ts);

/* Connections, for orphans. Without CURVE a client is its routing id, carried by one connection at a
 * time; the server reports each message's connection (its socket descriptor) and each disconnection.
 * When the connection that last carried a client's messages closes, its tensors are orphaned: freed
 * orphan_ttl_s later unless a message of the same client comes first (a reconnect with the same routing
 * id). Once connections are reported, a client without an open one (its connection closed while its request
 * waited) is an orphan from its first tensor on; a store that is never told of connections (CURVE: a client
 * is its key) has no orphans. Cheap: for the I/O thread. */
/* `owner` sent a message over connection `conn`, a descriptor; a negative one (inproc) is never closed. */
void titan_tstore_conn_seen(titan_tstore *ts, int conn, const char *owner);
/* Connection `conn` closed. */
void titan_tstore_conn_closed(titan_tstore *ts, int conn);

/* Frees the tensors that idle_ttl_s and orphan_ttl_s make due by the store's clock. Returns how many.
 * creates run it too, and the sweeper thread. */
int titan_tstore_sweep(titan_tstore *ts);
/* Tests: replaces the store's clock (CLOCK_MONOTONIC seconds) by `now(arg)`. Call before any other use. */
void titan_tstore_set_clock(titan_tstore *ts, double (*now)(void *arg), void *arg);

#endif
