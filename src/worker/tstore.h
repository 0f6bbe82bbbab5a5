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

typedef struct {
    char handle[TITAN_HANDLE_MAX];
    titan_dtype dtype;
    int rank;
    int64_t shape[TITAN_MAX_RANK];
    size_t bytes;
    void *dev; /* the backend's memory (mem_alloc) */
} titan_tensor_entry;

typedef struct {
    uint64_t worker_bytes; /* all resident tensors together (0: none allowed) */
    uint64_t client_bytes; /* one client's (0: none allowed) */
    int client_tensors;    /* how many one client may hold */
    double idle_ttl_s;     /* a tensor no request used for this long is freed (0: kept until freed) */
} titan_tstore_quota;

typedef struct titan_tstore titan_tstore;

/* Creates a store over backend `be` (borrowed). Returns NULL when out of memory. */
titan_tstore *titan_tstore_new(titan_backend *be, const titan_tstore_quota *quota);
/* Frees every tensor and the store; takes NULL and sets *p to NULL. No request may be running. */
void titan_tstore_destroy(titan_tstore **p);

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
/* Drops a reference; the memory and the quota go back when the last one goes. Takes NULL. */
void titan_tstore_release(titan_tstore *ts, titan_tensor_entry *e);
/* Unlists `handle` (memory follows when no request uses it). Returns 0 and *bytes, or -1 with err as
 * titan_tstore_acquire. */
int titan_tstore_free(titan_tstore *ts, const char *owner, const char *handle, size_t *bytes,
                      titan_error *err);
/* Drops every tensor of `owner`. Returns how many. */
int titan_tstore_free_all(titan_tstore *ts, const char *owner);
/* {"tensors":[{"ref","dtype","shape","bytes","age_s","idle_s"}...], "bytes", "count", "quota": {...},
 *  "worker_bytes"} for `owner`; NULL when out of memory. */
json_t *titan_tstore_list(titan_tstore *ts, const char *owner);
/* The worker's totals: bytes and tensors resident now, the number of clients holding any, and how
 * many tensors idle_ttl_s has freed since the start. */
void titan_tstore_usage(titan_tstore *ts, uint64_t *bytes, uint64_t *count, uint64_t *clients,
                        uint64_t *expired);
const titan_tstore_quota *titan_tstore_get_quota(const titan_tstore *ts);

#endif
