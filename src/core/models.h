/* models.h - the model registry: manifests from a directory, loading with LRU limits, inference. */
#ifndef TITAN_WORKER_MODELS_H
#define TITAN_WORKER_MODELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "request.h"
#include "runner.h"

typedef struct titan_models titan_models;

/* Reads every DIR/NAME.model.json manifest. `runners` (borrowed, must outlive the registry)
 * are the runners a manifest may name; `note` (may be NULL) hears about evictions. At most
 * max_models are loaded at once, and their files' sizes sum to at most memory_bytes.
 * Returns the registry, or NULL with a message in err. */
titan_models *titan_models_new(const char *dir, const titan_runner *const *runners, size_t nrunners, int max_models,
                               uint64_t memory_bytes, void (*note)(const char *msg), char *err, size_t errcap);
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

#endif
