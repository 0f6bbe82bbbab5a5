/* models.h - the model registry: manifests from a directory, loading with LRU limits, inference. */
#ifndef TITAN_WORKER_MODELS_H
#define TITAN_WORKER_MODELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "encoder/encoder.h"
#include "request.h"
#include "runner.h"

typedef struct titan_models titan_models;

/* Reads every DIR/NAME.model.json manifest. `runners` (borrowed, must outlive the registry)
 * are the runners a manifest may name; `note` (may be NULL) hears about evictions. At most
 * max_models are loaded at once, and their files' sizes sum to at most memory_bytes.
 * Returns the registry, or NULL with a message in err. */
titan_models *titan_models_new(const char *dir, const titan_runner *const *runners, size_t nrunners, int max_models,
                               uint64_t memory_bytes, void (*note)(const char *msg), char *err, size_t errcap);
/* Whether a NAME.model.json manifest in dir names `runner` (1), none does (0), or dir cannot be read (-1). A
 * manifest that cannot be read counts as naming it. */
int titan_models_dir_names_runner(const char *dir, const char *runner);
/* Unloads everything and frees the registry; takes NULL; sets *p to NULL. */
void titan_models_destroy(titan_models **p);

/* Returns a new JSON array describing each model (the caller's). */
json_t *titan_models_list(titan_models *m);
/* Loads (or unloads) the model named `name`. Returns 0 or -1 with err set. Thread-safe. */
int titan_models_load(titan_models *m, const char *name, titan_error *err);
int titan_models_unload(titan_models *m, const char *name, titan_error *err);
/* Runs request `req` ({"model", "inputs":[...]} or {"model", "input"}) into out. Loads the
 * model when needed. Thread-safe: one inference at a time per model. Returns 0 or -1. */
int titan_models_infer(titan_models *m, titan_request *req, titan_out *out, titan_error *err);

/* Encoders: a folder of DIR holding config.json (a HuggingFace model directory) is served under the folder's
 * name; a manifest with "runner": "bert" names a directory in "file" and sets its serving options (encoder.h).
 * Dynamic batching: whether requests of `op` for model `name` are merged into batches (embed and rerank on an
 * encoder; inference on a TorchScript model whose manifest sets max_batch > 1), with its batching options into
 * *opts (may be NULL). Thread-safe. */
bool titan_models_batch_opts(titan_models *m, const char *name, const char *op, titan_encoder_opts *opts);
/* Runs the inference requests jobs[0..n) of one TorchScript model as few runs as their shapes allow: requests
 * whose inputs agree past the first dimension are stacked along it, run once, and each gets its rows of every
 * output. A bad request fails alone. Thread-safe. */
void titan_models_infer_batch(titan_models *m, const char *name, titan_encoder_job *jobs, size_t n);
/* Runs embed/rerank requests jobs[0..n) on the encoder `name`, loading it when needed (encoder.h's
 * titan_encoder_run): each job's rc, err or out. An unknown model fails every job with not_found. Thread-safe;
 * requests on one encoder run in parallel. */
void titan_models_encode(titan_models *m, const char *name, titan_encoder_job *jobs, size_t n);
/* The backend that encoders loaded from now on run on, when it has a forward pass for them (backend.h's
 * bert_forward; borrowed: it must outlive the registry). Without it, or NULL, they run on the CPU. */
void titan_models_set_backend(titan_models *m, titan_backend *be);

#endif
