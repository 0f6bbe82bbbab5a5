/* runner.h - the C ABI between the model registry and a model runner (TorchScript first). */
#ifndef TITAN_WORKER_RUNNER_H
#define TITAN_WORKER_RUNNER_H

#include <stddef.h>
#include <stdint.h>

#include "titan/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TITAN_RUNNER_MAX_TENSORS 4

/* One dense, row-major, little-endian tensor. Inputs are borrowed; outputs are malloc'd by
 * the runner and become the caller's (free()). */
typedef struct {
    titan_dtype dtype;
    int rank;
    int64_t shape[TITAN_MAX_RANK];
    void *data;
    size_t bytes;
} titan_runner_tensor;

typedef struct titan_runner {
    const char *name; /* as in a manifest's "runner" */
    /* Loads the model file at `path` on `device` ("auto", "cpu" or "cuda"). Returns a handle,
     * or NULL with a message in err. */
    void *(*load)(const char *path, const char *device, char *err, size_t errcap);
    /* Runs the model. Not called concurrently on one handle (the registry holds a mutex per
     * model). Returns 0 and *noutputs outputs (at most max_outputs), or -1 with err set: one line, the
     * cause first ("RuntimeError: index out of range in self"), then any context that fits errcap
     * (the registry passes the room left in the reply's message). */
    int (*infer)(void *model, const titan_runner_tensor *inputs, int ninputs, titan_runner_tensor *outputs,
                 int max_outputs, int *noutputs, char *err, size_t errcap);
    /* Frees a handle; takes NULL. */
    void (*unload)(void *model);
    /* Writes a one-line description ("libtorch 1.13.0, cpu") into buf. */
    void (*describe)(char *buf, size_t cap);
} titan_runner;

#ifdef __cplusplus
}
#endif

#endif
