/* config.h - titan-worker's settings once read: defaults, the config file and the command line (settings.c). */
#ifndef TITAN_WORKER_CONFIG_H
#define TITAN_WORKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TITAN_MAX_BINDS 8

typedef struct {
    char *binds[TITAN_MAX_BINDS];
    int nbinds;
    char *device;            /* auto | cpu | cuda[:N] */
    int threads;             /* executor threads; 0 = one per core */
    int blas_threads;        /* BLAS threads per GEMM; 0 = all cores */
    int queue;               /* requests waiting beyond the busy executors before "busy" */
    uint64_t max_request_bytes;
    uint64_t max_result_bytes;
    uint64_t max_inflight_bytes; /* request bytes held at once (queued + running) before "busy" */
    uint64_t max_unread_mb;  /* replies a client has not read yet, in MiB, before its heavy requests get "busy" */
    char *log_level;
    char *endpoint_file;     /* written with the bound endpoints once ready */
    char *curve_secret;      /* the worker's CURVE secret certificate file; NULL: no CURVE */
    char *allow_keys;        /* directory of admitted client public certificates; NULL: any key */
    bool insecure;           /* allow binding beyond loopback without CURVE */
    int drain_timeout_ms;    /* how long shutdown waits for running requests */
    int heartbeat_ms;        /* ZMTP heartbeat interval; 0 = off */
    int max_client_share;    /* percent of the queue one client may hold (fairness); 100 = no cap */
    /* Batch jobs from Redis Streams (docs/JOBS.md); no consumer without redis_url. */
    char *redis_url;          /* redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] */
    char *redis_password;     /* overrides the URL's password */
    char *redis_prefix;       /* keys are "{PREFIX}:..."; NULL: "titan" */
    char *jobs_group;         /* consumer group; NULL: "titan-workers" */
    int visibility_timeout_ms; /* a pending entry idle this long is reclaimed by another worker */
    int max_attempts;         /* starts of one job before it goes to the dead-letter stream */
    int result_ttl_s;         /* TTL of a job record once it has ended */
    int jobs_inflight;        /* jobs the consumer keeps in hand at once; 0 = one per executor */
    char *models;             /* directory of NAME.model.json manifests; NULL: no models */
    int max_models;           /* models loaded at once */
    uint64_t model_memory_mb; /* budget of the loaded models' file sizes */
    char *http;               /* [ADDR:]PORT of /healthz, /readyz, /metrics; NULL: no HTTP */
    int http_max_body_kb;     /* one /v1 request body, at most, in KiB */
    int http_max_inflight;    /* /v1 requests with the server at once */
    char *http_token;         /* file of bearer tokens for /v1; NULL: none */
    bool insecure_http;       /* serve /v1 beyond loopback without a token */
    /* Resident tensors (tensor_put...). */
    uint64_t tensor_memory_mb; /* all clients together; 0: half the device's memory (a quarter of RAM on the CPU) */
    uint64_t tensor_quota_mb;  /* one client's; 0: the same as tensor_memory_mb */
    int max_tensors;           /* tensors one client may hold */
    int tensor_ttl_s;          /* free tensors unused this long; 0: never */
    int tensor_orphan_ttl_s;   /* free the tensors of a client whose connection closed this long after; 0: never */
    int max_worker_tensors;    /* tensors all clients together may hold */
    uint64_t pool_cache_mb;    /* CUDA: free device memory the pool keeps for reuse; 0: a quarter of the device */
    uint64_t host_pool_mb;     /* free host memory the host buffer pool keeps for reuse (hostpool.h); 0: none */
} titan_config;

/* Filled, checked and freed by settings.h, whose table gives each field its option, range and default. */

#endif
