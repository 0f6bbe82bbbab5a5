/* encoder.h - serving a BERT-family encoder: a model directory's weights (bert.h) and tokenizer (wordpiece.h), and
 * the `embed` and `rerank` requests of one batch. The worker merges requests for one model from many clients into
 * a batch (server.c); libtitan's engine and the worker without batching run batches of one. PROTOCOL.md 5.8. */
#ifndef TITAN_CORE_ENCODER_H
#define TITAN_CORE_ENCODER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "bert.h"
#include "error.h"
#include "request.h"

#define TITAN_ENCODER_MAX_DIMS 16

/* A model's serving options: its manifest's (NAME.model.json, optional), else these defaults. */
typedef struct {
    int max_batch;          /* requests merged into one batch (default 32) */
    int max_batch_tokens;   /* tokens of one forward pass (default 16384); a batch runs as several passes */
    int max_queue_delay_us; /* how long the first request of a batch waits for others (default 2000) */
    int queue;              /* requests waiting for this model at most; more are answered busy (default 256) */
    int max_inputs;         /* inputs (texts, id lists or documents) in one request (default 2048) */
    int dims[TITAN_ENCODER_MAX_DIMS]; /* the "dimensions" a request may ask for besides the model's own */
    int ndims;
} titan_encoder_opts;

void titan_encoder_opts_default(titan_encoder_opts *o);
/* Reads the options of a manifest object (max_batch, max_batch_tokens, max_queue_delay_us, queue, max_inputs,
 * dimensions: [..]) over *o. Returns 0, or -1 with a message naming the field. */
int titan_encoder_opts_parse(json_t *manifest, titan_encoder_opts *o, char *err, size_t errcap);

typedef struct titan_encoder titan_encoder;

typedef struct titan_backend titan_backend;
/* Loads the model directory `dir` (bert.h's layout) and its tokenizer. `progress` hears the loader's lines. `be`
 * (may be NULL; borrowed, must outlive the encoder) runs the forward pass when it has one (backend.h's
 * bert_forward: the CUDA module), else the CPU does. Returns 0 and *out, or -1 with err (code "bad_model" for what
 * the directory holds). */
int titan_encoder_open(const char *dir, const titan_encoder_opts *o, titan_backend *be,
                       void (*progress)(void *ctx, const char *line), void *ctx, titan_encoder **out,
                       titan_error *err);
/* "cpu" or the backend's name ("cuda"): where the forward pass runs. */
const char *titan_encoder_device(const titan_encoder *e);
void titan_encoder_free(titan_encoder **p);
const titan_bert_config *titan_encoder_config(const titan_encoder *e);
/* The float32 bytes of the weights. */
uint64_t titan_encoder_bytes(const titan_encoder *e);
/* "embedding" (a bi-encoder) or "rerank" (a cross-encoder). */
const char *titan_encoder_kind(const titan_encoder *e);
/* The longest input, in tokens, special tokens included. */
int titan_encoder_max_tokens(const titan_encoder *e);

/* One request of a batch. */
typedef struct {
    titan_request *req; /* parsed; op "embed" or "rerank" */
    titan_out *out;     /* its reply when rc is 0 */
    titan_error err;    /* why, when rc is -1 */
    int rc;
    size_t inputs; /* sequences it ran */
    size_t tokens; /* their tokens (its usage) */
} titan_encoder_job;

/* Runs the requests jobs[0..n) of one model `name` (as the replies name it): each is read and tokenized (a bad
 * request fails alone), then every sequence of the batch goes through the forward pass together, in passes of at
 * most max_batch_tokens tokens, and each request gets its reply. The results of a request do not depend on the
 * others in its batch beyond float32 rounding of the GEMMs (PROTOCOL.md 5.8). Thread-safe. */
void titan_encoder_run(titan_encoder *e, const char *name, titan_encoder_job *jobs, size_t n);

#endif
